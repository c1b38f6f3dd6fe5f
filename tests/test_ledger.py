"""The ledger on SQLite and PostgreSQL: organs, routes, claims, the transition table, receipts, the audit chain."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Executable, insert, inspect, text

from gateway.errors import AdminError, IllegalTransition, Problem
from gateway.folders import new_transfer_id
from gateway.ledger import direct
from gateway.ledger import statements as sql
from gateway.ledger.audit_buffer import AuditBuffer
from gateway.ledger.models import Event, Receipt, Transfer, TransferData, utc
from gateway.ledger.sqlite import SqliteWriter
from gateway.ledger.store import Ledger, StaleTransition
from gateway.lifecycle import State

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def received(ledger: Ledger, sender: str = "kv-bau-zh", name: str = "a.json") -> Transfer:
    transfer = TransferData.arrival(new_transfer_id(), sender, name, NOW)
    assert ledger.receive([transfer]) == 1
    return transfer


def setup_organs(ledger: Ledger) -> None:
    ledger.add_organ("kv-bau-zh", "control_body", "KV Bau ZH", NOW)
    ledger.add_organ("pk-bau-zh", "joint_committee", "PK Bau ZH", NOW)


def test_admin_manages_organs_routes_and_keys(ledger: Ledger) -> None:
    setup_organs(ledger)
    with pytest.raises(AdminError) as exc:
        ledger.add_organ("kv-bau-zh", "control_body", "again", NOW)
    assert exc.value.code == "ORGAN_EXISTS"
    with pytest.raises(AdminError):
        ledger.add_organ("x-1", "embassy", "wrong kind", NOW)

    assert not ledger.route_allowed("kv-bau-zh", "pk-bau-zh")
    ledger.set_route("kv-bau-zh", "pk-bau-zh", True, NOW)
    assert ledger.route_allowed("kv-bau-zh", "pk-bau-zh")
    assert not ledger.route_allowed("pk-bau-zh", "kv-bau-zh"), "the reply direction is its own route"
    ledger.set_route("kv-bau-zh", "pk-bau-zh", False, NOW)
    assert ledger.routes() == []

    ledger.add_ssh_key("kv-bau-zh", "SHA256:abc", "ssh-ed25519 AAAA...", NOW)
    assert ledger.authorized_keys("kv-bau-zh") == ["ssh-ed25519 AAAA..."]
    ledger.update_organ("kv-bau-zh", NOW, "organ_disabled", active=False)
    assert ledger.authorized_keys("kv-bau-zh") is None, "a disabled organ cannot log in"
    assert ledger.authorized_keys("nobody") is None
    ledger.remove_ssh_key("kv-bau-zh", "SHA256:abc", NOW)
    assert ledger.ssh_keys("kv-bau-zh") == []


def test_a_transfer_is_received_once(ledger: Ledger) -> None:
    transfer = received(ledger)
    assert ledger.receive([transfer]) == 0, "a redo of the intake records nothing new"
    assert ledger.count_by_state() == {"received": 1}


def test_concurrent_workers_never_claim_the_same_transfer(ledger: Ledger) -> None:
    ids = {received(ledger, name=f"{i}.json").id for i in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        while (c := ledger.claim(owner, NOW, timedelta(minutes=5))) is not None:
            with lock:
                claimed.append(c.transfer.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids), "every transfer claimed exactly once"


def query_plan(ledger: Ledger, statement: Executable, table: str, **values: object) -> str:
    """The database's plan for ``statement`` (not run), after statistics of ``table`` are fresh."""
    with ledger.engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        params = compiled.construct_params(values)
        if ledger.is_sqlite:
            rows = conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}", tuple(params[name] for name in compiled.positiontup or ())
            )
            return "\n".join(row[-1] for row in rows)
        conn.exec_driver_sql(f"ANALYZE {table}")
        return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", params))


def test_a_claim_finds_the_oldest_waiting_transfer_without_sorting_all_of_them(ledger: Ledger) -> None:
    for batch in range(4):
        ledger.receive([TransferData.arrival(new_transfer_id(), "kv", f"{batch}-{i}.json", NOW) for i in range(500)])
    plan = query_plan(ledger, sql.CLAIM, "transfer", now=NOW, until=NOW + timedelta(minutes=5), owner="node-a:0")
    if ledger.is_sqlite:  # one ordered range per waiting state, merged: the sort sees a row per state
        assert "USING INDEX ix_transfer_claim (state=? AND next_attempt_at<?)" in plan, plan
    else:
        assert "ix_transfer_waiting" in plan and "Sort" not in plan, plan


def test_a_claim_sees_the_organs_and_routes_an_admin_changed_on_another_node(ledger_url: str) -> None:
    worker_node, admin_node = Ledger(ledger_url), Ledger(ledger_url)
    try:
        setup_organs(admin_node)
        received(worker_node, name="1.json")
        first = worker_node.claim("node-a:0", NOW, timedelta(minutes=5)).directory
        assert first.find_organ("pk-bau-zh").active
        assert not first.route_allowed("kv-bau-zh", "pk-bau-zh")
        assert first.find_organ("nobody") is None

        admin_node.set_route("kv-bau-zh", "pk-bau-zh", True, NOW)
        admin_node.update_organ("pk-bau-zh", NOW, "organ_disabled", active=False)
        received(worker_node, name="2.json")
        second = worker_node.claim("node-a:0", NOW, timedelta(minutes=5)).directory
        assert second.route_allowed("kv-bau-zh", "pk-bau-zh"), "the next claim sees the new route"
        assert not second.find_organ("pk-bau-zh").active, "and the disabled organ"
        assert not first.route_allowed("kv-bau-zh", "pk-bau-zh"), "a pass keeps the directory of its claim"

        received(worker_node, name="3.json")
        assert worker_node.claim("node-a:0", NOW, timedelta(minutes=5)).directory is second, "no change, no reload"
        admin_node.add_organ("ag-bau-zh", "canton", "AG", NOW)
        received(worker_node, name="4.json")
        assert worker_node.claim("node-a:0", NOW, timedelta(minutes=5)).directory.find_organ("ag-bau-zh")
    finally:
        worker_node.close()
        admin_node.close()


def test_an_expired_lease_or_a_released_one_can_be_claimed_again(ledger: Ledger) -> None:
    transfer = received(ledger)
    assert ledger.claim("node-a:0", NOW, timedelta(minutes=5)) is not None
    assert ledger.claim("node-b:0", NOW, timedelta(minutes=5)) is None
    assert ledger.claim("node-b:0", NOW + timedelta(minutes=6), timedelta(minutes=5)).transfer.id == transfer.id
    assert ledger.release_leases("node-b:0") == 1
    assert ledger.claim("node-a:0", NOW, timedelta(minutes=5)) is not None
    ledger.release(transfer.id, error="gpg hung", retry_at=NOW + timedelta(minutes=1))
    assert ledger.claim("node-a:0", NOW, timedelta(minutes=5)) is None, "not before its retry time"
    assert ledger.claim("node-a:0", NOW + timedelta(minutes=2), timedelta(minutes=5)).transfer.attempts == 1
    ledger.transition(transfer.id, State.RECEIVED, State.REJECTED, NOW, release=True)
    assert ledger.transfer(transfer.id).lease_owner is None, "the last step ends the lease in its transaction"


def test_a_claim_does_not_wait_for_the_disk_but_the_steps_after_it_do(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lease lost in a power cut is only taken again, so its commit does not wait for the disk; a step's commit
    # does, and with it every commit before it. SQLite runs with synchronous=NORMAL in WAL mode and the ledger
    # syncs the log after each durable commit; PostgreSQL turns synchronous_commit off for the claim's
    # transaction only.
    transfer = received(ledger)
    if ledger.is_sqlite:
        syncs: list[str] = []
        sync_log = SqliteWriter.sync_log

        def counted(writer: SqliteWriter) -> None:  # the real sync, counted
            syncs.append("sync")
            sync_log(writer)

        monkeypatch.setattr(SqliteWriter, "sync_log", counted)
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert ledger.claim("node-a:0", NOW, timedelta(minutes=5)) is not None
        assert syncs == [], "a claim does not sync the log"
        assert ledger.transition(transfer.id, State.RECEIVED, State.REJECTED, NOW, release=True)
        assert syncs == ["sync"], "a step syncs it once it has committed"
        return
    with ledger.core_tx(durable=False) as conn:  # what a claim commits in
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    for _ in range(3):  # the pool hands the claim's connection out again
        assert ledger.claim("node-a:0", NOW, timedelta(minutes=5)) is not None
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        ledger.release(transfer.id)


def test_the_transition_table_is_enforced(ledger: Ledger) -> None:
    transfer = received(ledger)
    with pytest.raises(IllegalTransition):
        ledger.transition(transfer.id, State.RECEIVED, State.DELIVERED, NOW)
    assert ledger.transfer(transfer.id).state == "received", "an illegal transition changes nothing"
    ledger.transition(transfer.id, State.RECEIVED, State.VALIDATED, NOW, message_id="m-1", recipient_id="pk")
    with pytest.raises(StaleTransition):
        ledger.transition(transfer.id, State.RECEIVED, State.VALIDATED, NOW)


def test_a_delivery_owes_a_receipt_until_it_is_written(ledger: Ledger) -> None:
    transfer = received(ledger)
    ledger.transition(transfer.id, State.RECEIVED, State.VALIDATED, NOW, message_id="m-1")
    assert ledger.transition(transfer.id, State.VALIDATED, State.ENCRYPTED, NOW).receipt is None
    moved = ledger.transition(transfer.id, State.ENCRYPTED, State.DELIVERED, NOW, delivered_name="x.json.pgp")
    due = ledger.due_receipts()
    assert [(d.transfer.id, d.receipt.status_code) for d in due] == [(transfer.id, 100)]
    owed, held = moved.receipt, due[0].receipt
    assert (owed.status_code, owed.status_info, owed.errors, utc(owed.event_time)) == (
        held.status_code,
        held.status_info,
        held.errors,
        utc(held.event_time),
    ), "the transition hands back the receipt it owes, as the ledger holds it"
    ledger.claim("node-a:0", NOW, timedelta(minutes=5), written=[(transfer.id, 100)])
    assert ledger.due_receipts() == [], "the worker's next claim marks the receipt written"
    assert ledger.transfer(transfer.id).status_code == 100


def test_the_receipts_due_are_found_without_reading_the_written_ones(ledger: Ledger) -> None:
    arrivals = [TransferData.arrival(new_transfer_id(), "kv", f"{i}.json", NOW) for i in range(2000)]
    ledger.receive(arrivals)
    receipt = {"status_code": 100, "status_info": "delivered", "errors": "[]", "event_time": NOW}
    with ledger.engine.begin() as conn:  # a year keeps ~1.5 million receipts written, a round's few are due
        rows = [{**receipt, "transfer_id": t.id, "written": i > 0} for i, t in enumerate(arrivals)]
        conn.execute(insert(Receipt), rows)
    assert [due.transfer.id for due in ledger.due_receipts()] == [arrivals[0].id]
    plan = query_plan(ledger, sql.DUE, "receipt")
    assert "ix_receipt_due" in plan and "SCAN receipt\n" not in f"{plan}\n", plan


def test_a_transfer_is_found_by_its_message_id_or_its_id_without_reading_the_others(ledger: Ledger) -> None:
    arrivals = [TransferData.arrival(new_transfer_id(), "kv", f"{i}.json", NOW) for i in range(2000)]
    ledger.receive(arrivals)
    for i, t in enumerate(arrivals[:3]):
        ledger.transition(t.id, State.RECEIVED, State.VALIDATED, NOW, message_id=f"m-{i}")
    assert [t.id for t in ledger.find_transfers("m-1")] == [arrivals[1].id]
    assert [t.id for t in ledger.find_transfers(arrivals[2].id)] == [arrivals[2].id]
    plan = query_plan(ledger, sql.FIND, "transfer", key="m-1")
    assert "ix_transfer_message" in plan and "SCAN transfer\n" not in f"{plan}\n", plan


def test_a_repeated_message_id_is_rejected_with_201(ledger: Ledger) -> None:
    first, second = received(ledger, name="a.json"), received(ledger, name="b.json")
    ledger.transition(first.id, State.RECEIVED, State.VALIDATED, NOW, message_id="m-1")
    moved = ledger.transition(second.id, State.RECEIVED, State.VALIDATED, NOW, message_id="m-1")
    assert (moved.transfer.state, moved.transfer.status_code) == ("rejected", 201)
    assert '"DUPLICATE_MESSAGE_ID"' in ledger.due_receipts(second.id)[0].receipt.errors
    other_sender = received(ledger, sender="pk-bau-zh")
    assert ledger.transition(
        other_sender.id, State.RECEIVED, State.VALIDATED, NOW, message_id="m-1"
    ).transfer.state == ("validated"), "message ids are unique per sender"


def test_a_dossier_rejected_after_validation_frees_its_message_id_for_the_dossier_sent_again(ledger: Ledger) -> None:
    held, damaged = received(ledger, name="held.json"), received(ledger, name="damaged.json")
    ledger.transition(held.id, State.RECEIVED, State.HELD, NOW, via=[State.VALIDATED], message_id="m-1")
    ledger.transition(held.id, State.HELD, State.REJECTED, NOW)  # 311: held too long
    # its spooled copy found damaged on the way (recorded with the validation): it never reserves the id
    ledger.transition(damaged.id, State.RECEIVED, State.REJECTED, NOW, via=[State.VALIDATED], message_id="m-2")
    for message_id in ("m-1", "m-2"):
        again = received(ledger, name=f"again-{message_id}.json")
        moved = ledger.transition(again.id, State.RECEIVED, State.VALIDATED, NOW, message_id=message_id)
        assert moved.transfer.state == "validated", f"{message_id} sent again is taken"
    for attempt in range(2):
        late = received(ledger, name=f"late-{attempt}.json")
        moved = ledger.transition(late.id, State.RECEIVED, State.VALIDATED, NOW, message_id="m-1")
        assert (moved.transfer.state, moved.transfer.status_code) == ("rejected", 201), (
            "a 201 frees nothing: the accepted dossier keeps its id"
        )


def test_a_step_recorded_with_the_next_one_keeps_both_events_and_its_checks(ledger: Ledger) -> None:
    first, second = received(ledger, name="a.json"), received(ledger, name="b.json")
    moved = ledger.transition(first.id, State.RECEIVED, State.ENCRYPTED, NOW, via=[State.VALIDATED], message_id="m-1")
    assert moved.transfer.state == "encrypted"
    actions = [e.action for e in ledger.events(transfer_id=first.id)]
    assert actions == ["transition:received", "transition:validated", "transition:encrypted"]
    again = ledger.transition(second.id, State.RECEIVED, State.ENCRYPTED, NOW, via=[State.VALIDATED], message_id="m-1")
    assert (again.transfer.state, again.transfer.status_code) == ("rejected", 201), (
        "the message id is still reserved on the way"
    )
    with pytest.raises(IllegalTransition):
        ledger.transition(second.id, State.RECEIVED, State.DELIVERED, NOW, via=[State.ENCRYPTED])
    with pytest.raises(ValueError, match="owes a receipt"):
        ledger.transition(first.id, State.ENCRYPTED, State.FETCHED, NOW, via=[State.DELIVERED])
    assert ledger.verify_chain()[1] == []


def test_a_rejection_lists_every_problem(ledger: Ledger) -> None:
    transfer = received(ledger)
    problems = [
        Problem("UID_CHECKSUM", "/dossier/employer/uid", "bad check digit"),
        Problem("DOSSIER_SCHEMA", "/envelope/test", "must be a boolean"),
    ]
    moved = ledger.transition(transfer.id, State.RECEIVED, State.REJECTED, NOW, problems=problems)
    assert moved.transfer.status_code == 210, "the schema violation is the more fundamental reason"
    assert ledger.due_receipts(transfer.id)[0].receipt.errors.count('"code"') == 2


def test_the_audit_chain_detects_tampering(ledger: Ledger) -> None:
    setup_organs(ledger)
    ledger.audit(NOW, "login", "publickey", organ_id="kv-bau-zh", peer="127.0.0.1")
    ledger.audit(NOW, "login_failed", "unknown key", organ_id="kv-bau-zh", ok=False, peer="127.0.0.1")
    count, bad = ledger.verify_chain()
    assert count >= 4 and bad == []
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE event SET ok = :t WHERE action = 'login_failed'"), {"t": True})
    assert ledger.verify_chain()[1] != [], "an altered event breaks the chain"


def test_an_access_event_the_database_refuses_is_written_escaped_and_holds_up_none_after_it(ledger: Ledger) -> None:
    setup_organs(ledger)
    buffer = AuditBuffer(ledger)
    unstorable = "outbox/Z\udcfcrich.json" if ledger.is_sqlite else "outbox/a\x00b.json"  # no UTF-8; NUL in PostgreSQL
    for detail in ("outbox/before.json", unstorable, "outbox/after.json"):
        buffer.add(NOW, "upload", detail, "kv-bau-zh", True, "127.0.0.1:50000")
    buffer.flush()
    written = [(e.action, e.detail, e.organ_id) for e in ledger.events(audit_only=True)][-3:]
    assert written == [
        ("upload", "outbox/before.json", "kv-bau-zh"),
        ("unwritable", f"action 'upload' organ 'kv-bau-zh' peer '127.0.0.1:50000' detail {unstorable!a}", None),
        ("upload", "outbox/after.json", "kv-bau-zh"),
    ]
    buffer.add(NOW, "download", "inbox/next.pgp", "kv-bau-zh", True, "127.0.0.1:50000")
    buffer.flush()
    assert ledger.events(audit_only=True)[-1].detail == "inbox/next.pgp", "nothing is left over to hold up a round"
    assert ledger.verify_chain()[1] == []


def test_a_ledger_made_by_an_earlier_version_gets_the_indexes_the_directory_version_and_the_organs_quotas(
    ledger_url: str,
) -> None:
    old = Ledger(ledger_url)
    setup_organs(old)
    with old.engine.begin() as conn:  # as the first release left it
        conn.execute(text("ALTER TABLE organ DROP COLUMN upload_quota_bytes"))
        conn.execute(text("ALTER TABLE transfer DROP COLUMN encrypted_to"))
        conn.execute(text("DROP INDEX ix_transfer_claim"))
        conn.execute(text("DROP TABLE directoryversion"))
        conn.execute(text("DROP INDEX IF EXISTS ix_transfer_waiting"))
        conn.execute(text("CREATE INDEX ix_transfer_work ON transfer (state, next_attempt_at)"))
        conn.execute(text("DROP INDEX ix_receipt_due"))
        conn.execute(text("DROP INDEX ix_transfer_message"))
        conn.execute(text("CREATE INDEX ix_transfer_sender_msg ON transfer (sender_id, message_id)"))
    old.close()
    upgraded = Ledger(ledger_url)
    try:
        names = {ix["name"] for ix in inspect(upgraded.engine).get_indexes("transfer")}
        assert "ix_transfer_claim" in names and "ix_transfer_work" not in names
        assert "ix_transfer_message" in names and "ix_transfer_sender_msg" not in names
        assert ("ix_transfer_waiting" in names) is not upgraded.is_sqlite, "PostgreSQL's claim index, only there"
        assert "ix_receipt_due" in {ix["name"] for ix in inspect(upgraded.engine).get_indexes("receipt")}
        assert upgraded.organ("kv-bau-zh").upload_quota(16 << 30) == 16 << 30, "the organs there: the setting's"
        upgraded.update_organ("kv-bau-zh", NOW, "organ_quota", upload_quota_bytes=64 << 30)  # more than 32 bits
        assert upgraded.organ("kv-bau-zh").upload_quota_bytes == 64 << 30
        transfer = received(upgraded)
        claimed = upgraded.claim("node-a:0", NOW, timedelta(minutes=5))
        assert claimed.transfer.id == transfer.id and claimed.transfer.encrypted_to is None
        assert claimed.directory.find_organ("pk-bau-zh") is not None
    finally:
        upgraded.close()


def test_what_a_step_records_reads_back_the_same_through_the_admin_views(ledger: Ledger) -> None:
    # Claims and steps run on the driver's own cursor; the CLI's views read through SQLAlchemy's ORM.
    transfer = received(ledger)
    claimed = ledger.claim("node-a:0", NOW, timedelta(minutes=5))
    moved = ledger.transition(
        transfer.id, State.RECEIVED, State.VALIDATED, NOW + timedelta(seconds=1), message_id="m-1", test=True
    )
    stored = TransferData.model_validate(ledger.transfer(transfer.id).model_dump())
    assert moved.transfer == stored
    assert (stored.test, stored.lease_until, stored.lease_owner) == (True, claimed.transfer.lease_until, "node-a:0")
    assert utc(stored.updated_at) == NOW + timedelta(seconds=1)


def test_a_hot_statement_missing_a_column_with_a_default_is_refused(ledger: Ledger) -> None:
    # SQLAlchemy fills in column defaults in the execution machinery the hot path skips: no silent NULL.
    event = {"at": NOW, "action": "login", "detail": "", "prev_hash": "", "hash": ""}
    with pytest.raises(ValueError, match=r"no value for \['ok'\]"), ledger.core_tx() as conn:
        direct.execute(conn, insert(Event.__table__), [event])


def test_monitoring_reads_the_open_transfers_and_the_last_hour_without_the_year_behind_them(ledger: Ledger) -> None:
    month_ago = NOW - timedelta(days=30)
    finished = [TransferData.arrival(new_transfer_id(), "kv", f"{i}.json", month_ago) for i in range(2000)]
    ledger.receive(finished)
    written = {"status_code": 110, "status_info": "picked up", "errors": "[]", "event_time": month_ago, "written": True}
    with ledger.engine.begin() as conn:  # what a year leaves: finished transfers, their receipts and events past
        conn.execute(text("UPDATE transfer SET state = 'fetched'"))
        conn.execute(insert(Receipt), [{**written, "transfer_id": t.id} for t in finished])
    fresh = received(ledger, name="fresh.json")
    ledger.release(fresh.id, error="disk full", retry_at=NOW + timedelta(minutes=1))
    ledger.add_receipt(fresh.id, 701, "will expire soon", NOW)

    gauges = ledger.gauges(NOW - timedelta(hours=1))
    assert gauges.open_transfers == {"received": (1, NOW)}
    assert (gauges.retrying, gauges.receipts_unwritten) == (1, (1, NOW))
    assert gauges.actions == {"transition:received": 1, "fault": 1, "receipt:701": 1}
    assert ledger.spooled_bytes() == {fresh.sender_id: fresh.size}, "the finished ones hold no spool"
    for statement, table, index in (
        (sql.GAUGE_OPEN, "transfer", "ix_transfer_claim"),
        (sql.GAUGE_RETRYING, "transfer", "ix_transfer_claim" if ledger.is_sqlite else "ix_transfer_waiting"),
        (sql.GAUGE_UNWRITTEN, "receipt", "ix_receipt_due"),
        (sql.GAUGE_ACTIONS, "event", "ix_event_at"),
        (sql.SPOOLED_BYTES, "transfer", "ix_transfer_claim"),  # the SFTP door's upload quota, once a second
    ):
        plan = query_plan(ledger, statement, table, since=NOW - timedelta(hours=1))
        assert index in plan and f"SCAN {table}\n" not in f"{plan}\n", (statement, plan)
