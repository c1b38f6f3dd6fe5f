"""The core exchange, end to end: `flam-gateway serve` as a subprocess, real folders, the real gpg.

Software on the gateway host drops dossiers into an outbox; the recipient finds them encrypted and signed in
its inbox; the sender reads its receipts.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import harness, samples
from gateway.folders import Folders, new_transfer_id
from gateway.harness import Sandbox

KV, PK, CANTON, GE, BE = "kv-bau-zh", "pk-bau-zh", "canton-zh", "canton-ge", "canton-be"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    """One running gateway with a control body, a joint committee and two cantons."""
    sandbox = Sandbox(
        settings={
            "settle_seconds": 0.2,
            "rescan_seconds": 1,
            "unknown_suffix_grace_seconds": 2,
            "max_message_bytes": 3_000_000,
            "listen": "",
        }
    )
    sandbox.cli("init")
    sandbox.add_organ(KV, "control_body")
    sandbox.add_organ(PK, "joint_committee")
    sandbox.add_organ(CANTON, "canton")
    sandbox.cli("organ", "add", GE, "--kind", "canton", "--name", "Canton GE")  # no PGP key yet
    sandbox.allow(KV, PK)
    sandbox.allow(PK, CANTON)
    sandbox.allow(KV, GE)
    sandbox.start(listen="")
    yield sandbox
    sandbox.close()


def settled(box: Sandbox, name: str, sender: str = KV):
    """Wait until the file ``name`` dropped by ``sender`` has reached an end (or a hold)."""

    def done():
        rows = [t for t in box.transfers() if t.file_name == name and t.sender_id == sender]
        open_states = {"received", "validated", "encrypted"}
        if rows and rows[-1].state not in open_states and not box.ledger.due_receipts(rows[-1].id):
            return rows[-1]
        return None

    return box.wait_for(done, 60, f"{name} settled")


def receipt_for(box: Sandbox, transfer_id: str, code: int, organ: str = KV) -> dict:
    matches = list(box.folder(organ, "receipts").glob(f"*_{code}_{transfer_id}.receipt.json"))
    assert len(matches) == 1, f"one {code} receipt for {transfer_id}, found {matches}"
    return harness.read_receipt(matches[0])


def test_a_json_dossier_reaches_the_recipient_encrypted_and_signed(box: Sandbox) -> None:
    doc = samples.make_dossier(KV, PK, attachments=[("bericht.pdf", samples.make_pdf(40_000))])
    data = samples.dossier_bytes(doc)
    box.drop(KV, "report-1.json", data)

    transfer = settled(box, "report-1.json")
    assert (transfer.state, transfer.status_code) == ("delivered", 100)
    delivered = box.folder(PK, "inbox") / f"{KV}_{doc['envelope']['message_id']}.json.pgp"
    assert transfer.delivered_name == delivered.name and delivered.exists()

    plain = box.decrypt(PK, delivered)
    assert plain.data == data, "the recipient gets the exact bytes dropped"
    assert plain.signature_valid and plain.signer_fingerprint == box.gateway_fingerprint()

    receipt = receipt_for(box, transfer.id, 100)
    assert receipt["status_code"] == 100 and receipt["message_id"] == doc["envelope"]["message_id"]
    assert receipt["errors"] == [] and receipt["file"] == "report-1.json"
    assert not any((box.data_dir / "spool").rglob("*.*")), "the spool is wiped once the dossier is done"
    assert not list(box.folder(KV, "outbox").iterdir())


def test_a_test_message_saved_with_a_byte_order_mark_is_delivered_as_it_is_and_marked_as_test(box: Sandbox) -> None:
    doc = samples.make_dossier(KV, PK)
    doc["envelope"]["test"] = True  # the spec: delivered like others, marked as test in the ledger
    data = b"\xef\xbb\xbf" + samples.dossier_bytes(doc)  # what Windows Notepad and some exports write first
    box.drop(KV, "bom-test.json", data)

    transfer = settled(box, "bom-test.json")
    assert (transfer.state, transfer.status_code, transfer.test) == ("delivered", 100, True)
    assert box.decrypt(PK, box.folder(PK, "inbox") / transfer.delivered_name).data == data
    shown = json.loads(box.cli("transfers", "show", doc["envelope"]["message_id"], "--json").stdout)
    assert [t["test"] for t in shown] == [True]


def test_a_zip_package_reaches_the_recipient(box: Sandbox, tmp_path: Path) -> None:
    pdfs = {"kontrollbericht.pdf": samples.make_pdf(300_000, seed=1), "lohnliste.pdf": samples.make_pdf(9_000, seed=2)}
    doc = samples.make_dossier(KV, PK, attachments=list(pdfs.items()), embed=False)
    package = tmp_path / "pkg.zip"
    samples.write_package(package, doc, pdfs)
    box.drop(KV, "package-1.zip", package.read_bytes())

    transfer = settled(box, "package-1.zip")
    assert (transfer.state, transfer.status_code) == ("delivered", 100)
    delivered = box.folder(PK, "inbox") / f"{KV}_{doc['envelope']['message_id']}.zip.pgp"
    plain = box.decrypt(PK, delivered)
    assert plain.data == package.read_bytes() and plain.signature_valid
    with zipfile.ZipFile(io.BytesIO(plain.data)) as zf:
        assert zf.read("lohnliste.pdf") == pdfs["lohnliste.pdf"]


def test_the_recipient_picking_up_gives_the_sender_110(box: Sandbox) -> None:
    doc = samples.make_dossier(PK, CANTON, message_type="violation_report")
    box.drop(PK, "violation.json", samples.dossier_bytes(doc))
    transfer = settled(box, "violation.json", sender=PK)
    assert transfer.state == "delivered"
    (box.folder(CANTON, "inbox") / transfer.delivered_name).unlink()

    box.wait_for(lambda: box.ledger.transfer(transfer.id).state == "fetched", 30, "pick-up")
    box.wait_for(lambda: not box.ledger.due_receipts(transfer.id), 10, "110 receipt written")  # just after the state
    receipt = receipt_for(box, transfer.id, 110, organ=PK)
    assert receipt["recipient_id"] == CANTON


def test_temporary_names_are_never_picked_up(box: Sandbox) -> None:
    outbox = box.folder(KV, "outbox")
    for name in (".hidden.json", "~lock.json", "x.json.part", "x.json.partial", "x.json.filepart", "x.json.tmp"):
        (outbox / name).write_bytes(b"{}")
    doc = samples.make_dossier(KV, PK)
    box.drop(KV, "after-temp.json", samples.dossier_bytes(doc))
    settled(box, "after-temp.json")
    assert sorted(p.name for p in outbox.iterdir()) == sorted(
        [".hidden.json", "~lock.json", "x.json.part", "x.json.partial", "x.json.filepart", "x.json.tmp"]
    )
    for path in outbox.iterdir():
        path.unlink()


def _bad_uid(doc: dict) -> None:
    doc["dossier"]["employer"]["uid"] = "CHE-116.281.711"


def _future_control(doc: dict) -> None:
    doc["dossier"]["control"]["date"] = "2099-01-01"


def _schema(doc: dict) -> None:
    doc["envelope"]["surprise"] = True


def _sender(doc: dict) -> None:
    doc["envelope"]["sender_id"] = PK


def _unknown_recipient(doc: dict) -> None:
    doc["envelope"]["recipient_id"] = "nobody-here"


def _forbidden_route(doc: dict) -> None:
    doc["envelope"]["recipient_id"] = CANTON


def _attachment_sha(doc: dict) -> None:
    doc["dossier"]["attachments"][0]["sha256"] = "0" * 64


def _decimals(doc: dict) -> None:
    from decimal import Decimal

    doc["dossier"]["workers"][0]["gross_hourly_wage_chf"] = Decimal("31.505")


REJECTIONS = [
    ("bad-uid.json", _bad_uid, 211, "UID_CHECKSUM", "/dossier/employer/uid"),
    ("future.json", _future_control, 211, "DATE_IN_FUTURE", "/dossier/control/date"),
    ("schema.json", _schema, 210, "DOSSIER_SCHEMA", "/envelope"),
    ("sender.json", _sender, 300, "SENDER_MISMATCH", "/envelope/sender_id"),
    ("unknown.json", _unknown_recipient, 301, "RECIPIENT_UNKNOWN", "/envelope/recipient_id"),
    ("route.json", _forbidden_route, 310, "ROUTE_FORBIDDEN", "/envelope/recipient_id"),
    ("sha.json", _attachment_sha, 202, "ATTACHMENT_SHA256", "/dossier/attachments/0/sha256"),
    ("decimals.json", _decimals, 211, "AMOUNT_DECIMALS", "/dossier/workers/0/gross_hourly_wage_chf"),
]


def test_each_rule_rejects_with_its_receipt_code_and_nothing_is_delivered(box: Sandbox) -> None:
    before = set(box.folder(PK, "inbox").iterdir())
    for name, mutate, *_ in REJECTIONS:
        doc = samples.make_dossier(KV, PK, attachments=[("a.pdf", samples.make_pdf(2_000))])
        mutate(doc)
        box.drop(KV, name, samples.dossier_bytes(doc))
    box.drop(KV, "empty.json", b"")
    box.drop(KV, "broken.json", b'{"envelope": ')
    box.drop(KV, "huge.json", b" " * 3_100_000)
    box.drop(KV, "notes.txt", b"hello")

    for name, _, code, problem, path in [
        *REJECTIONS,
        ("empty.json", None, 200, "FILE_EMPTY", ""),
        ("broken.json", None, 200, "FILE_NOT_JSON", ""),
        ("huge.json", None, 330, "TOO_LARGE", ""),
        ("notes.txt", None, 200, "FILE_SUFFIX", ""),
    ]:
        transfer = settled(box, name)
        assert (transfer.state, transfer.status_code) == ("rejected", code), name
        receipt = receipt_for(box, transfer.id, code)
        assert receipt["file"] == name
        assert (problem, path) in {(e["code"], e["path"]) for e in receipt["errors"]}, (name, receipt["errors"])
        assert "CHE-116.281.711" not in json.dumps(receipt), "receipts never carry the value found"
        quarantined = box.data_dir / "quarantine" / KV / f"{transfer.id}.{name}"
        assert quarantined.exists(), "the rejected original is kept for the admin, outside every organ's folders"
    assert set(box.folder(PK, "inbox").iterdir()) == before, "nothing rejected is delivered"


def test_a_receipts_folder_removed_on_the_host_is_made_again_for_the_next_receipt(box: Sandbox) -> None:
    shutil.rmtree(box.folder(PK, "receipts"))  # someone tidying the host; until now the receipts were lost
    box.drop(PK, "to-canton.json", samples.dossier_bytes(samples.make_dossier(PK, CANTON)))
    transfer = settled(box, "to-canton.json", sender=PK)
    assert (transfer.state, receipt_for(box, transfer.id, 100, PK)["status_code"]) == ("delivered", 100)


def test_a_repeated_message_id_gets_201(box: Sandbox) -> None:
    doc = samples.make_dossier(KV, PK)
    box.drop(KV, "first.json", samples.dossier_bytes(doc))
    assert settled(box, "first.json").status_code == 100
    box.drop(KV, "again.json", samples.dossier_bytes(doc))
    transfer = settled(box, "again.json")
    assert (transfer.state, transfer.status_code) == ("rejected", 201)


def test_a_recipient_without_a_usable_key_holds_the_dossier_until_it_has_one(box: Sandbox) -> None:
    doc = samples.make_dossier(KV, GE)
    box.drop(KV, "to-geneva.json", samples.dossier_bytes(doc))
    transfer = settled(box, "to-geneva.json")
    assert (transfer.state, transfer.status_code) == ("held", 601)
    receipt = receipt_for(box, transfer.id, 601)
    assert receipt["errors"][0]["code"] == "RECIPIENT_NO_KEY"
    told = f"WARNING gateway.worker: transfer {transfer.id} from {KV} to {GE} held (RECIPIENT_NO_KEY: the recipient"
    assert told in box.log.read_text(), "the admin's log says what to mend"

    ge = box.add_organ_keys(GE)
    box.wait_for(lambda: box.ledger.transfer(transfer.id).state == "delivered", 30, "delivery after key import")
    delivered = box.folder(GE, "inbox") / box.ledger.transfer(transfer.id).delivered_name
    assert box.decrypt(ge.id, delivered).data == samples.dossier_bytes(doc)


def test_a_dossier_whose_spooled_copy_is_damaged_while_held_is_not_delivered_and_may_be_sent_again(
    box: Sandbox,
) -> None:
    box.cli("organ", "add", BE, "--kind", "canton", "--name", "Canton BE")  # no PGP key yet
    box.allow(KV, BE)
    doc = samples.make_dossier(KV, BE)
    box.drop(KV, "to-bern.json", samples.dossier_bytes(doc))
    transfer = settled(box, "to-bern.json")
    assert (transfer.state, transfer.status_code) == ("held", 601)

    spooled = Folders(box.data_dir).spooled(KV, transfer.id, "to-bern.json")
    with spooled.open("r+b") as fh:  # the days it waits, the disk turns one byte of the copy the gateway holds
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0x20]))
    check = box.cli("fsck", "--json", check=False)
    assert check.returncode == 1
    damage = [f["transfer_id"] for f in json.loads(check.stdout) if f["kind"] == "spool_damaged"]
    assert damage == [transfer.id], "the admin's check finds it (beside the canton's missing key)"

    box.add_organ_keys(BE)  # the canton's key arrives and the held dossier is taken up again
    told = box.wait_for(lambda: list(box.folder(KV, "receipts").glob(f"*_500_{transfer.id}.receipt.json")), 30, "500")
    receipt = json.loads(told[0].read_text())
    assert [e["code"] for e in receipt["errors"]] == ["SPOOL_DAMAGED"]
    assert "send the dossier again" in receipt["status_info"]
    assert box.ledger.transfer(transfer.id).state == "rejected"
    assert not list(box.folder(BE, "inbox").iterdir()), "nothing damaged reaches the recipient"
    assert f"transfer {transfer.id} rejected for the gateway's fault" in box.log.read_text(), "the admin is told"
    assert (box.data_dir / "quarantine" / KV / spooled.name).exists(), "the damaged copy is kept for the admin"

    time.sleep(1)
    between = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}"  # after the first was received, to the second
    box.drop(KV, "to-bern-again.json", samples.dossier_bytes(doc))  # the same dossier, under the same message id
    again = settled(box, "to-bern-again.json")
    assert (again.state, again.status_code) == ("delivered", 100)
    assert box.decrypt(BE, box.folder(BE, "inbox") / again.delivered_name).data == samples.dossier_bytes(doc)

    stats = json.loads(box.cli("transfers", "stats", "--organ", BE, "--json").stdout)  # the month's report
    [route] = stats["routes"]
    assert (route["sender_id"], route["recipient_id"], route["received"]) == (KV, BE, 2)
    assert (route["delivered"], route["rejected"], route["open"]) == (1, 1, 0)
    assert stats["rejections"] == [{"sender_id": KV, "status_code": 500, "count": 1}]
    shown = box.cli("transfers", "stats", "--organ", BE, "--since", "2026-01-01").stdout
    assert "rejections by status code" in shown and "canton-be" in shown

    def listed(*window: str) -> list[str]:
        return [t["file"] for t in json.loads(box.cli("transfers", "list", "--organ", BE, *window, "--json").stdout)]

    assert listed("--since", between) == ["to-bern-again.json"]
    assert listed("--until", between) == ["to-bern.json"]
    backwards = box.cli("transfers", "list", "--since", between, "--until", between[:10], check=False)
    assert (backwards.returncode, backwards.stderr.split(":")[0]) == (2, "error TIME_WINDOW"), backwards.stderr


def test_an_admin_who_disables_the_recipient_or_denies_the_route_ends_the_dossiers_held_for_it(box: Sandbox) -> None:
    uri = "canton-ur"
    box.cli("organ", "add", uri, "--kind", "canton", "--name", "Canton UR")  # no PGP key yet
    box.allow(KV, uri)
    first, second = samples.make_dossier(KV, uri), samples.make_dossier(KV, uri)
    box.drop(KV, "to-uri-1.json", samples.dossier_bytes(first))
    assert settled(box, "to-uri-1.json").state == "held"

    box.cli("organ", "disable", uri)  # the canton leaves the exchange: it receives nothing now, held or not
    rejected = box.wait_for(lambda: settled(box, "to-uri-1.json").state == "rejected" and settled(box, "to-uri-1.json"))
    assert rejected.status_code == 301
    assert receipt_for(box, rejected.id, 301)["errors"][0]["code"] == "RECIPIENT_INACTIVE"

    box.cli("organ", "enable", uri)
    box.drop(KV, "to-uri-2.json", samples.dossier_bytes(second))
    assert settled(box, "to-uri-2.json").state == "held"
    box.cli("route", "deny", KV, uri)
    rejected = box.wait_for(lambda: settled(box, "to-uri-2.json").state == "rejected" and settled(box, "to-uri-2.json"))
    assert receipt_for(box, rejected.id, 310)["errors"][0]["code"] == "ROUTE_FORBIDDEN"

    box.allow(KV, uri)
    box.add_organ_keys(uri)
    assert not list(box.folder(uri, "inbox").iterdir()), "neither was delivered on the way"
    box.drop(KV, "to-uri-1-again.json", samples.dossier_bytes(first))  # the sender sends it again, same message id
    again = settled(box, "to-uri-1-again.json")
    assert (again.state, again.status_code) == ("delivered", 100)
    assert box.decrypt(uri, box.folder(uri, "inbox") / again.delivered_name).data == samples.dossier_bytes(first)


def test_a_dossier_on_its_way_when_the_admin_disables_its_recipient_is_not_delivered(
    box: Sandbox, immutable: Callable[[Path], AbstractContextManager[None]]
) -> None:
    schwyz = "canton-sz"
    box.add_organ(schwyz, "canton")
    box.allow(KV, schwyz)
    inbox, dossier = box.folder(schwyz, "inbox"), samples.make_dossier(KV, schwyz)

    def delivery_failed() -> bool:
        return any(t.file_name == "to-schwyz.json" and t.state == "encrypted" and t.attempts for t in box.transfers())

    with immutable(inbox):  # the inbox takes no file (a disk fault): its delivery is retried
        box.drop(KV, "to-schwyz.json", samples.dossier_bytes(dossier))
        box.wait_for(delivery_failed, 30, "a delivery that failed, encrypted and waiting for its retry")
        box.cli("organ", "disable", schwyz)  # the canton leaves the exchange before the retry
    rejected = settled(box, "to-schwyz.json")
    assert (rejected.state, rejected.status_code) == ("rejected", 301)
    assert receipt_for(box, rejected.id, 301)["errors"][0]["code"] == "RECIPIENT_INACTIVE"
    assert not list(inbox.iterdir()), "nothing delivered to a disabled organ"
    assert not Folders(box.data_dir).encrypted(rejected.id).exists(), "its encrypted copy is gone with it"

    box.cli("organ", "enable", schwyz)  # back: the sender sends it again, under the same message id
    box.drop(KV, "to-schwyz-again.json", samples.dossier_bytes(dossier))
    again = settled(box, "to-schwyz-again.json")
    assert (again.state, again.status_code) == ("delivered", 100)
    assert box.decrypt(schwyz, inbox / again.delivered_name).data == samples.dossier_bytes(dossier)


def test_the_audit_trail_names_the_account_behind_each_admin_change_and_no_one_behind_the_gateways_own(
    box: Sandbox,
) -> None:
    box.env["SUDO_USER"] = "alice"  # an admin working through sudo
    try:
        box.cli("organ", "add", "canton-ti", "--kind", "canton", "--name", "Canton TI")
    finally:
        del box.env["SUDO_USER"]
    box.cli("organ", "disable", "canton-ti")
    events = json.loads(box.cli("audit", "list", "--limit", "1000", "--json").stdout)
    account = pwd.getpwuid(os.getuid()).pw_name
    by_action = {e["action"]: e["peer"] for e in events if e["organ_id"] == "canton-ti"}
    expected = f"cli {account} (sudo by alice)" if account != "alice" else "cli alice"
    assert by_action["organ_added"] == expected
    assert by_action["organ_disabled"] == f"cli {account}"
    assert {e["peer"] for e in events if e["action"].startswith("transition:")} == {None}, "serve's steps: nobody's"


def test_files_stamped_in_the_future_by_a_clock_that_runs_ahead_are_taken_at_once(box: Sandbox) -> None:
    # A legacy host whose clock runs a day ahead: its export keeps that time as the file's modification time
    # (written in place and closed, or copied with its times and renamed in). Intake judges a file's quiet time
    # by the kernel's own change time, so neither waits for that day to come.
    ahead = time.time() + 86_400
    outbox = box.folder(KV, "outbox")
    in_place = outbox / "ahead-in-place.json"
    in_place.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    os.utime(in_place, (ahead, ahead))
    copied = outbox / ".ahead-copied.json.tmp"
    copied.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    os.utime(copied, (ahead, ahead))
    copied.rename(outbox / "ahead-copied.json")
    assert settled(box, "ahead-in-place.json").status_code == 100
    assert settled(box, "ahead-copied.json").status_code == 100


def test_a_file_its_writer_still_holds_open_is_not_taken_while_the_writer_pauses(box: Sandbox) -> None:
    # A local export creates its file, then stops for longer than the settle time and the rescan interval (a
    # slow query, a busy disk) before it writes the first half, and again before the rest. It has not closed the
    # file, so the file is not complete: the gateway waits for the close.
    data = samples.dossier_bytes(samples.make_dossier(KV, PK))
    with open(box.folder(KV, "outbox") / "paused.json", "wb") as fh:
        time.sleep(1.5)
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(1.5)
        fh.write(data[len(data) // 2 :])
    assert settled(box, "paused.json").status_code == 100
    assert [t.file_name for t in box.transfers()].count("paused.json") == 1


def test_a_name_that_is_not_utf8_is_rejected_and_holds_up_none_of_the_files_beside_it(box: Sandbox) -> None:
    # A legacy host writes its file names in Latin-1 ("Zürich" with the single byte 0xFC). The ledger and the
    # receipts hold text, so such a name cannot be kept as it is: the file is rejected (200) with the bytes that
    # are not UTF-8 shown as U+FFFD, and the dossier renamed in with it, in the same batch of intake, is delivered.
    staging, outbox = os.fsencode(box.root / "latin1-export"), os.fsencode(box.folder(KV, "outbox"))
    os.mkdir(staging)
    names = [b"Z\xfcrich-bericht.json", b"Bern-bericht.json"]
    for name in names:
        with open(staging + b"/" + name, "wb") as fh:
            fh.write(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    for name in names:
        os.rename(staging + b"/" + name, outbox + b"/" + name)
    assert settled(box, "Bern-bericht.json").status_code == 100
    transfer = settled(box, "Z\ufffdrich-bericht.json")
    assert (transfer.state, transfer.status_code) == ("rejected", 200)
    receipt = receipt_for(box, transfer.id, 200)
    assert receipt["file"] == "Z\ufffdrich-bericht.json"
    assert [e["code"] for e in receipt["errors"]] == ["FILE_NAME"]


def test_a_name_that_is_not_utf8_left_in_the_spool_by_an_earlier_release_is_rejected_at_start(box: Sandbox) -> None:
    # Until the seventeenth session intake renamed such a file into its spool and then failed to record it, at
    # every round, together with every file of its batch. After the upgrade the start finds it there.
    box.stop()
    stuck = Folders(box.data_dir).spooled(KV, new_transfer_id(), os.fsdecode(b"Gen\xe8ve.json"))
    stuck.parent.mkdir(parents=True, exist_ok=True)
    stuck.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    box.start(listen="")
    transfer = settled(box, "Gen\ufffdve.json")
    assert (transfer.state, transfer.status_code) == ("rejected", 200)
    assert [e["code"] for e in receipt_for(box, transfer.id, 200)["errors"]] == ["FILE_NAME"]


def test_a_file_dropped_while_the_gateway_is_down_is_delivered_after_start(box: Sandbox) -> None:
    box.stop()
    doc = samples.make_dossier(KV, PK)
    box.drop(KV, "overnight.json", samples.dossier_bytes(doc))
    box.start(listen="")
    assert settled(box, "overnight.json").status_code == 100


def test_the_admin_sees_transfers_as_json_and_a_timeline(box: Sandbox) -> None:
    rows = json.loads(box.cli("transfers", "list", "--json", "--organ", KV).stdout)
    assert rows and {
        "message_id",
        "dossier_id",
        "sender_id",
        "recipient_id",
        "state",
        "status_code",
        "file",
        "created_at",
    } <= set(rows[0])
    delivered = [r for r in rows if r["state"] == "delivered"]
    shown = json.loads(box.cli("transfers", "show", delivered[0]["message_id"], "--json").stdout)
    actions = [e["action"] for e in shown[0]["events"]]
    assert actions[:4] == [
        "transition:received",
        "transition:validated",
        "transition:encrypted",
        "transition:delivered",
    ]
    only_rejected = json.loads(box.cli("transfers", "list", "--json", "--status", "rejected").stdout)
    assert only_rejected and {r["state"] for r in only_rejected} == {"rejected"}
    newest = json.loads(box.cli("transfers", "list", "--json", "--organ", KV, "--limit", "2").stdout)
    assert newest == rows[-2:], "the newest two, newest last (a year's ledger is not printed whole by default)"
    assert box.cli("audit", "verify").returncode == 0


def test_vendors_check_files_offline(box: Sandbox, tmp_path: Path) -> None:
    good_doc = samples.make_dossier(KV, PK, attachments=[("scan.pdf", samples.make_pdf(2_000))])
    good_doc["dossier"]["workers"][0]["nationality"] = "XK"  # Kosovo: user-assigned in ISO, the Confederation's
    attachment = good_doc["dossier"]["attachments"][0]
    attachment["sha256"] = attachment["sha256"].upper()  # hex as .NET's Convert.ToHexString writes it
    good = tmp_path / "good.json"
    good.write_bytes(samples.dossier_bytes(good_doc))
    assert box.cli("check", str(good), "--sender", KV).returncode == 0
    bad_doc = samples.make_dossier(KV, PK)
    _bad_uid(bad_doc)
    _decimals(bad_doc)
    bad_doc["dossier"]["employer"]["address"]["country"] = "XX"  # the shape of a code, but no country's
    bad = tmp_path / "bad.json"
    bad.write_bytes(samples.dossier_bytes(bad_doc))
    done = box.cli("check", str(bad), "--sender", KV, "--json", check=False)
    assert done.returncode == 1
    codes = {e["code"] for e in json.loads(done.stdout)["errors"]}
    assert {"UID_CHECKSUM", "AMOUNT_DECIMALS", "COUNTRY_CODE"} <= codes, "every error is listed"


def test_the_watcher_outlives_a_removal_it_cannot_look_up(tmp_path: Path) -> None:
    # The recipient's software on the gateway host writes a scratch file with a Latin-1 name into its inbox and
    # removes it. The watcher asks the ledger whether that removal was a pick-up; a question the ledger cannot
    # answer (this one, or any while the database restarts) must not end the watcher, which would leave every
    # later drop and pick-up to the periodic rescan (five minutes here).
    sandbox = Sandbox(tmp_path, settings={"settle_seconds": 0.2, "rescan_seconds": 300, "listen": ""})
    try:
        sandbox.init_pair(KV, PK)
        sandbox.start(listen="")
        scratch = os.fsencode(sandbox.folder(PK, "inbox")) + b"/Z\xfcrich.pdf"
        with open(scratch, "wb") as fh:
            fh.write(b"%PDF-")
        os.unlink(scratch)
        sandbox.drop(KV, "after.json", samples.dossier_bytes(samples.make_dossier(KV, PK)))
        transfer = sandbox.wait_transfer("after.json", "delivered", timeout=20)
        (sandbox.folder(PK, "inbox") / transfer.delivered_name).unlink()
        sandbox.wait_transfer("after.json", "fetched", timeout=20)
    finally:
        sandbox.close()
