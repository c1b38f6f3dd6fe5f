"""Expiry, retention, fsck and redos, on an in-process gateway driven by an injectable clock (no sleeping)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, text

from gateway import admin, harness, samples
from gateway.config import load_settings
from gateway.crypto import decrypt_file, export_public_key, generate_key
from gateway.errors import AdminError
from gateway.folders import PARTIAL_XATTR
from gateway.fsck import fsck
from gateway.handlers.deliver import delivery_name
from gateway.history import age_ledger
from gateway.retention import expire_deliveries, purge
from gateway.service import Gateway

KV, PK = "kv-bau-zh", "pk-bau-zh"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gw(short_tmp: Path, clock: Clock, ledger_url: str) -> Iterator[Gateway]:
    env = {"FLAM_GATEWAY_SETTLE_SECONDS": "0", "FLAM_GATEWAY_DATABASE_URL": ledger_url}
    gateway = Gateway(load_settings(data_dir=short_tmp / "data", env=env), clock)
    gateway.init()
    admin.add_organ(gateway, KV, "control_body", "KV")
    admin.add_organ(gateway, PK, "joint_committee", "PK")
    fpr = generate_key(short_tmp / "pk", PK, "pk@example.invalid")
    (short_tmp / "pk.asc").write_text(export_public_key(short_tmp / "pk", fpr))
    admin.import_pgp_key(gateway, PK, short_tmp / "pk.asc")
    gateway.ledger.set_route(KV, PK, True, clock())
    yield gateway
    gateway.close()


def deliver(gw: Gateway, name: str, data: bytes) -> None:
    """Drop a file and let intake and one worker take it as far as it goes."""
    (gw.folders.outbox(KV) / name).write_bytes(data)
    gw.intake.scan()
    worker = gw.worker()
    while worker.work_one():
        pass


def receipt_codes(gw: Gateway) -> list[int]:
    return sorted(harness.read_receipt(p)["status_code"] for p in gw.folders.receipts(KV).iterdir())


def test_an_uncollected_delivery_is_warned_about_then_expires(gw: Gateway, clock: Clock) -> None:
    deliver(gw, "a.json", samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    (delivered,) = gw.ledger.transfers(state="delivered")
    inbox_file = gw.folders.inbox(PK) / delivered.delivered_name
    worker = gw.worker()

    clock.advance(days=24)
    assert expire_deliveries(worker, gw.settings) == (0, 0)
    clock.advance(days=2)
    assert expire_deliveries(worker, gw.settings) == (1, 0), "701 at warn_before_expiry_days"
    assert expire_deliveries(worker, gw.settings) == (0, 0), "warned once"
    assert receipt_codes(gw) == [100, 701]

    clock.advance(days=4)
    assert expire_deliveries(worker, gw.settings) == (0, 1)
    assert not inbox_file.exists()
    assert gw.ledger.transfer(delivered.id).state == "expired"
    assert receipt_codes(gw) == [100, 204, 701]


def test_deliveries_warned_already_cost_a_round_no_transaction_of_their_own(gw: Gateway, clock: Clock) -> None:
    for i in range(3):  # a recipient whose software stopped picking up: its deliveries wait in the warning window
        deliver(gw, f"r{i}.json", samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    clock.advance(days=26)
    worker = gw.worker()
    assert expire_deliveries(worker, gw.settings) == (3, 0)
    transactions: list[object] = []

    def began(connection: object) -> None:
        transactions.append(connection)

    event.listen(gw.ledger.engine, "begin", began)
    try:
        assert expire_deliveries(worker, gw.settings) == (0, 0)
    finally:
        event.remove(gw.ledger.engine, "begin", began)
    assert len(transactions) == 2, "one read of the deliveries, one of their warnings (not a write for each)"


def test_a_delivery_picked_up_while_nobody_watched_is_fetched_at_the_next_round(gw: Gateway, clock: Clock) -> None:
    deliver(gw, "a.json", samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    (delivered,) = gw.ledger.transfers(state="delivered")
    gw.reconcile_pickups()
    assert gw.ledger.transfer(delivered.id).state == "delivered", "still in the inbox"
    (gw.folders.inbox(PK) / delivered.delivered_name).unlink()  # the gateway was down, or the event was lost
    gw.reconcile_pickups()
    assert gw.ledger.transfer(delivered.id).state == "fetched"
    assert receipt_codes(gw) == [100, 110]


def test_a_delivery_a_killed_run_made_is_recorded_on_the_redo_although_its_recipient_was_disabled_since(
    gw: Gateway, clock: Clock, immutable: Callable[[Path], AbstractContextManager[None]]
) -> None:
    inbox = gw.folders.inbox(PK)
    with immutable(inbox):  # its delivery fails: encrypted, waiting for a retry
        deliver(gw, "a.json", samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    [transfer] = gw.ledger.transfers()
    assert transfer.state == "encrypted"
    # the retry placed it in the inbox and was killed before it recorded so; then the admin disables the committee
    name = delivery_name(KV, transfer.message_id or "", "json", False)
    gw.folders.encrypted(transfer.id).rename(inbox / name)
    admin.set_active(gw, PK, False)
    clock.advance(minutes=5)
    worker = gw.worker()
    while worker.work_one():
        pass
    redone = gw.ledger.transfer(transfer.id)
    assert (redone.state, redone.delivered_name) == ("delivered", name)
    assert receipt_codes(gw) == [100], "no 301 for a dossier the committee has in its inbox"


def test_a_dossier_encrypted_to_a_key_the_admin_replaced_before_its_delivery_is_not_delivered_and_may_be_sent_again(
    gw: Gateway, clock: Clock, short_tmp: Path, immutable: Callable[[Path], AbstractContextManager[None]]
) -> None:
    inbox, data = gw.folders.inbox(PK), samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock()))
    with immutable(inbox):  # its delivery fails: encrypted to the committee's key, waiting for a retry
        deliver(gw, "a.json", data)
    [transfer] = gw.ledger.transfers()
    assert (transfer.state, transfer.encrypted_to) == ("encrypted", gw.ledger.organ(PK).pgp_fingerprint)
    # the committee reports its key compromised and sends a new one: nothing may reach it under the old one
    new = generate_key(short_tmp / "pk2", PK, "pk2@example.invalid")
    (short_tmp / "pk2.asc").write_text(export_public_key(short_tmp / "pk2", new))
    admin.import_pgp_key(gw, PK, short_tmp / "pk2.asc")
    clock.advance(minutes=5)
    deliver(gw, "a-again.json", data)  # the retry, then the sender sends it again under the same message id
    rejected, again = (gw.ledger.transfer(t.id) for t in sorted(gw.ledger.transfers(), key=lambda t: t.id))
    assert (rejected.state, rejected.status_code) == ("rejected", 311)
    [receipt] = [p for p in gw.folders.receipts(KV).iterdir() if f"_311_{rejected.id}" in p.name]
    assert harness.read_receipt(receipt)["errors"][0]["code"] == "RECIPIENT_KEY_CHANGED"
    assert (again.state, again.encrypted_to) == ("delivered", new)
    [delivered] = inbox.iterdir()
    assert decrypt_file(short_tmp / "pk2", delivered).data == data, "only under the new key"


def test_purge_destroys_old_quarantine_and_ledger_rows(gw: Gateway, clock: Clock) -> None:
    deliver(gw, "bad.json", b"{broken")
    (rejected,) = gw.ledger.transfers(state="rejected")
    kept = gw.folders.quarantined(KV, rejected.id, "bad.json")
    assert kept.exists()

    clock.advance(days=91)
    report = purge(gw.worker(), gw.settings)
    assert report.quarantined_destroyed == 1 and not kept.exists()
    assert report.transfers_purged == 0, "ledger rows stay 12 months"

    clock.advance(days=300)
    report = purge(gw.worker(), gw.settings)
    assert report.transfers_purged == 1 and report.events_purged > 0
    assert gw.ledger.transfer(rejected.id) is None
    assert gw.ledger.verify_chain()[1] == [], "the chain still verifies from its new start"


def test_receipts_a_sender_never_collects_are_removed_when_a_delivery_would_expire(gw: Gateway, clock: Clock) -> None:
    deliver(gw, "bad.json", b"{broken")  # its legacy software reads its inbox, never its receipts
    assert receipt_codes(gw) == [200]
    clock.advance(days=29)
    assert purge(gw.worker(), gw.settings).receipts_removed == 0
    clock.advance(days=2)
    assert purge(gw.worker(), gw.settings).receipts_removed == 1 and receipt_codes(gw) == []
    assert gw.ledger.transfers(state="rejected")[0].status_code == 200, "the ledger keeps the status"


def test_a_partial_upload_nobody_resumes_is_removed_after_a_week(gw: Gateway, clock: Clock) -> None:
    # The SFTP door keeps an upload cut off under a temporary name for its client to resume; one never resumed
    # (the organ's software sent the dossier again under another name) would hold plaintext and quota for ever.
    outbox = gw.folders.outbox(KV)
    (outbox / "scan.zip.filepart").write_bytes(b"PK" * 500)
    (outbox / ".export.lock").write_bytes(b"")  # a local program's own file: left alone
    clock.advance(days=6)
    assert purge(gw.worker(), gw.settings).partials_removed == 0
    clock.advance(days=2)
    assert purge(gw.worker(), gw.settings).partials_removed == 1
    assert sorted(p.name for p in outbox.iterdir()) == [".export.lock"]
    [event] = gw.ledger.events(action="partial_removed")
    assert (event.organ_id, event.ok) == (KV, True)
    assert event.detail.startswith("/outbox/scan.zip.filepart: 1000 bytes, unchanged since ")


def test_a_recipient_key_that_will_expire_is_named_by_fsck_and_organ_list_a_month_ahead(
    gw: Gateway, clock: Clock, short_tmp: Path
) -> None:
    assert fsck(gw) == [] and admin.pgp_key_state(gw, gw.ledger.organ(PK).pgp_fingerprint) == "usable"
    fpr = generate_key(short_tmp / "pk2", PK, "pk2@example.invalid", expire="45d")  # the organ's new key
    (short_tmp / "pk2.asc").write_text(export_public_key(short_tmp / "pk2", fpr))
    admin.import_pgp_key(gw, PK, short_tmp / "pk2.asc")
    assert fsck(gw) == []

    clock.advance(days=20)
    [finding] = fsck(gw)
    assert (finding.kind, finding.path, finding.repaired) == ("pgp_key", PK, False)
    assert finding.detail == f"{PK}'s OpenPGP key {fpr}: expires within 30 days"
    clock.advance(days=30)
    assert [f.detail for f in fsck(gw)] == [f"{PK}'s OpenPGP key {fpr}: KEY_EXPIRED"], "dossiers to it are held now"


def test_fsck_reports_differences_and_repairs_the_safe_ones(gw: Gateway, clock: Clock) -> None:
    deliver(gw, "a.json", samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    (delivered,) = gw.ledger.transfers(state="delivered")
    assert fsck(gw) == []

    (gw.folders.inbox(PK) / delivered.delivered_name).unlink()  # picked up while nobody watched
    (gw.folders.inbox(PK) / "stranger.pgp").write_bytes(b"?")
    orphan = gw.folders.spooled(KV, "0" * 32, "orphan.json")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    (gw.folders.tmp / "half.tmp").write_bytes(b"x")
    outbox = gw.folders.outbox(KV)
    (outbox / ".sftp-0123456789abcdef.upload").write_bytes(b"PK" * 500)  # a killed door's upload of a .filepart
    os.setxattr(outbox / ".sftp-0123456789abcdef.upload", PARTIAL_XATTR, b"scan.zip.filepart")

    kinds = {f.kind: f.repaired for f in fsck(gw, repair=True)}
    assert kinds == {
        "picked_up_unnoticed": True,
        "inbox_unknown": False,
        "spool_unrecorded": True,
        "temp_file": True,
        "partial_upload": True,
    }
    assert gw.ledger.transfer(delivered.id).state == "fetched"
    assert gw.ledger.transfer("0" * 32).state == "received"
    assert not (gw.folders.tmp / "half.tmp").exists()
    assert [p.name for p in outbox.iterdir()] == ["scan.zip.filepart"], "kept for its client to resume"

    with gw.ledger.engine.begin() as conn:
        conn.execute(text("UPDATE event SET detail = 'forged' WHERE action = 'organ_added'"))
    assert "audit_chain" in {f.kind for f in fsck(gw)}


def test_a_ledger_a_year_old_is_checked_verified_and_purged_one_night_at_a_time(gw: Gateway, clock: Clock) -> None:
    for i in range(5):  # tonight's dossiers, delivered and picked up
        deliver(gw, f"r{i}.json", samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    for path in gw.folders.inbox(PK).iterdir():
        path.unlink()
    gw.reconcile_pickups()
    tonight = gw.ledger.verify_chain()[0]
    history = age_ledger(gw.ledger, nights=367, per_night=5)  # the nights before, as they would have left it
    assert (history.transfers, history.receipts) == (367 * 5, 367 * 5 * 2)

    assert fsck(gw) == [], "an old ledger agrees with its folders"
    heard: list[tuple[int, int]] = []
    events, bad = gw.ledger.verify_chain(lambda checked, about: heard.append((checked, about)))
    assert bad == [] and events == tonight + history.events > 10_000, "read in more than one batch"
    assert heard[0][0] == 10_000 and heard[0][1] >= events and heard[-1] == (events, events), heard

    # a year is 3.7 million events, 22 s: on a terminal `audit verify` (and `fsck`) show how far they are
    env = {**os.environ, "FLAM_GATEWAY_DATABASE_URL": gw.settings.ledger_url, "COLUMNS": "120"}
    command = ["flam-gateway", "--data-dir", str(gw.folders.root), "audit", "verify"]
    terminal = subprocess.run(["script", "-qec", shlex.join(command), "/dev/null"], env=env, capture_output=True)
    shown = terminal.stdout.decode()
    assert terminal.returncode == 0 and "checking the audit chain" in shown and f"{events}/{events}" in shown, shown
    piped = subprocess.run(command, env=env, capture_output=True, text=True)  # a log, cron: no bar in it
    assert (piped.stdout, piped.stderr) == (f"audit chain intact: {events} events\n", "")

    report = purge(gw.worker(), gw.settings)
    assert report.transfers_purged == 2 * 5, "the two nights older than retention_days (365)"
    assert gw.ledger.verify_chain()[1] == []
    ids = sorted(t.id for t in gw.ledger.transfers())
    with gw.ledger.engine.begin() as conn:
        for forged in (ids[0], ids[-1]):  # in the first batch and in the last
            conn.execute(text("UPDATE event SET detail = 'forged' WHERE transfer_id = :tid"), {"tid": forged})
    assert len(gw.ledger.verify_chain()[1]) == 2 * 5, "each of their five events"


def test_the_admin_reads_what_went_where_in_a_month(gw: Gateway, clock: Clock) -> None:
    worker = gw.worker()
    deliver(gw, "may.json", samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    deliver(gw, "broken.json", b"{not json")
    clock.advance(days=40)
    june = clock()
    for name in ("a.json", "b.json"):
        deliver(gw, name, samples.dossier_bytes(samples.make_dossier(KV, PK, now=clock())))
    deliver(gw, "to-nobody.json", samples.dossier_bytes(samples.make_dossier(KV, "canton-xx", now=clock())))
    picked = gw.ledger.transfers(state="delivered")[-1]
    (gw.folders.inbox(PK) / picked.delivered_name).unlink()  # the committee fetches one of them
    worker.pick_up(PK, picked.delivered_name)

    last_month = admin.exchange_stats(gw, june - timedelta(days=30), clock() + timedelta(seconds=1))
    size = sum(t.size for t in gw.ledger.transfers(state="fetched") + gw.ledger.transfers(state="delivered")[-1:])
    assert last_month["routes"] == [
        {"sender_id": KV, "recipient_id": "canton-xx", "received": 1, "rejected": 1}
        | dict.fromkeys(("delivered", "picked_up", "expired", "open", "bytes_delivered"), 0),
        {"sender_id": KV, "recipient_id": PK, "received": 2, "delivered": 2, "picked_up": 1, "bytes_delivered": size}
        | dict.fromkeys(("expired", "rejected", "open"), 0),
    ]
    assert last_month["rejections"] == [{"sender_id": KV, "status_code": 301, "count": 1}]

    both = admin.exchange_stats(gw, june - timedelta(days=60), clock() + timedelta(seconds=1), organ_id=PK)
    assert [(r["recipient_id"], r["received"], r["delivered"]) for r in both["routes"]] == [(PK, 3, 3)], (
        "the unreadable one named no recipient, so it is not PK's"
    )
    everything = admin.exchange_stats(gw, june - timedelta(days=60), clock() + timedelta(seconds=1))
    assert {(r["recipient_id"], r["rejected"]) for r in everything["routes"]} >= {(None, 1)}
    assert {"sender_id": KV, "status_code": 200, "count": 1} in everything["rejections"]
    with pytest.raises(AdminError, match="TIME_WINDOW"):
        admin.exchange_stats(gw, clock(), june)
    received = [t.file_name for t in gw.ledger.transfers(received_until=june)]  # `transfers list --until`
    assert received == ["may.json", "broken.json"]
    received = [t.file_name for t in gw.ledger.transfers(received_since=june, limit=2)]
    assert received == ["b.json", "to-nobody.json"], "the newest two of June's, newest last"
