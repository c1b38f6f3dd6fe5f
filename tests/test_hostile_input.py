"""Hostile and broken input: every case of the corpus gets its receipt code, nothing is delivered, and the
gateway stays up. Plus a bounded property-based fuzz test of the parse + validate path."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hostile_corpus import CASES, DISABLED, OTHER, RECIPIENT, SENDER, TWINS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import harness, samples
from gateway.errors import STATUS_OF
from gateway.folders import safe_component
from gateway.handlers.inspect import inspect_file
from gateway.harness import Sandbox
from gateway.limits import Limits


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox(
        settings={
            "settle_seconds": 0.1,
            "rescan_seconds": 1,
            "listen": "",
            "unknown_suffix_grace_seconds": 1,
            "max_message_bytes": 3_000_000,
        }
    )
    sandbox.cli("init")
    for organ, kind in (
        (SENDER, "control_body"),
        (RECIPIENT, "joint_committee"),
        (OTHER, "canton"),
        (DISABLED, "joint_committee"),
    ):
        sandbox.add_organ(organ, kind)
    sandbox.allow(SENDER, RECIPIENT)
    sandbox.allow(SENDER, DISABLED)
    sandbox.cli("organ", "disable", DISABLED)
    sandbox.start(listen="")
    yield sandbox
    sandbox.close()


def test_every_hostile_input_gets_its_receipt_code_and_nothing_is_delivered(box: Sandbox) -> None:
    first = samples.make_dossier(SENDER, RECIPIENT)
    box.drop(SENDER, "original.json", samples.dossier_bytes(first))
    box.wait_for(lambda: any(t.state == "delivered" for t in box.transfers()), 60, "the original delivered")
    delivered_before = sorted(box.folder(RECIPIENT, "inbox").iterdir())

    cases = [*CASES, *TWINS]
    for case in cases:
        box.drop(SENDER, case.name, case.data)
    box.drop(SENDER, "same-message-id.json", samples.dossier_bytes(first))
    box.drop(SENDER, "same-file-again.json", samples.dossier_bytes(first))
    outbox = box.folder(SENDER, "outbox")
    (outbox / "a-folder.json").mkdir()
    os.mkfifo(outbox / "a-fifo.json")
    (outbox / "a-link.json").symlink_to("/etc/passwd")
    specials = {
        "same-message-id.json": (201, "DUPLICATE_MESSAGE_ID"),
        "same-file-again.json": (201, "DUPLICATE_MESSAGE_ID"),
        "a-folder.json": (200, "FILE_NOT_REGULAR"),
        "a-fifo.json": (200, "FILE_NOT_REGULAR"),
        "a-link.json": (200, "FILE_NOT_REGULAR"),
    }
    expected = {c.name: (c.status, c.code) for c in cases} | specials
    assert len(expected) >= 100

    rows = box.wait_settled(len(expected) + 1, timeout=180)
    by_name = {t.file_name: t for t in rows}
    wrong = []
    for name, (status, code) in expected.items():
        transfer = by_name.get(name)
        if transfer is None or (transfer.state, transfer.status_code) != ("rejected", status):
            wrong.append((name, status, transfer and (transfer.state, transfer.status_code)))
            continue
        receipts = list(box.folder(SENDER, "receipts").glob(f"*_{status}_{transfer.id}.receipt.json"))
        receipt = harness.read_receipt(receipts[0]) if len(receipts) == 1 else {"errors": [], "message_id": None}
        if code not in {e["code"] for e in receipt["errors"]}:
            wrong.append((name, code, receipt["errors"]))
        elif not receipts[0].name.startswith(safe_component(receipt["message_id"] or name) + "_"):
            wrong.append((name, "named after its message id, or after the file where it has none", receipts[0].name))
    assert wrong == []
    assert sorted(box.folder(RECIPIENT, "inbox").iterdir()) == delivered_before, "nothing hostile is delivered"
    assert not list(outbox.iterdir()), "everything was taken out of the outbox"
    assert box.process is not None and box.process.poll() is None, "the gateway stays up"


ENVELOPE_KEYS = [
    "schema_version",
    "message_id",
    "message_type",
    "sender_id",
    "recipient_id",
    "dossier_id",
    "reference_message_id",
    "created_at",
    "test",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def test_file_names_made_to_fool_the_admin_are_shown_as_they_are_their_control_characters_escaped(
    box: Sandbox,
) -> None:
    name = "[bold]Entwurf[red]2026.json"  # the admin's views took it for styles: they showed "Entwurf2026.json"
    box.drop(SENDER, name, samples.dossier_bytes(samples.make_dossier(SENDER, RECIPIENT)))
    transfer = box.wait_transfer(name, "delivered")
    listed = box.cli("transfers", "list", "--organ", SENDER)
    assert f" {name} " in listed.stdout, listed.stdout
    shown = box.cli("transfers", "show", transfer.id)
    assert shown.stdout.startswith(f"{name} {SENDER} → {RECIPIENT}"), shown.stdout
    (local := box.root / name).write_bytes(samples.dossier_bytes(samples.make_dossier(SENDER, RECIPIENT)))
    assert box.cli("check", str(local), "--sender", SENDER).stdout == f"{name}: valid\n"

    steering = "report\x1b]0;all clear\x07\x1b[8m\u202egnp.json"  # sets the title, hides text, turns it around
    box.drop(SENDER, steering, b"{}")
    rejected = box.wait_transfer(steering, "rejected")
    listed = box.cli("transfers", "list", "--organ", SENDER)
    assert "report\\x1b]0;all clear\\x07\\x1b[8m\\u202egnp.json" in listed.stdout, listed.stdout
    assert not {"\x1b", "\x07", "\u202e"} & set(listed.stdout), "nothing the terminal would act on"
    assert box.cli("transfers", "show", rejected.id).stdout.startswith("report\\x1b]0;all clear")


def test_a_file_named_to_forge_lines_of_the_serve_log_stays_within_its_own_line_when_its_intake_fails(
    box: Sandbox, immutable: Callable[[Path], AbstractContextManager[None]]
) -> None:
    forged = "report\n2026-11-30 03:00:00,000 INFO gateway.intake: received 1 file(s)\x1b[8m.json"
    spool = box.data_dir / "spool" / "in" / SENDER
    spool.mkdir(exist_ok=True)
    with immutable(spool):  # the spool takes no file (an admin's script, a disk fault)
        box.drop(SENDER, forged, b"{}")
        box.wait_for(lambda: "intake of " in box.log.read_text(), 20, "the failed intake in the serve log")
    log = box.log.read_text()
    assert "report\\n2026-11-30 03:00:00,000 INFO gateway.intake: received 1 file(s)\\x1b[8m.json" in log, log[-2000:]
    assert not re.search(r"^2026-11-30 03:00:00", log, re.MULTILINE), "no line forged"
    assert "\x1b" not in log, "nothing hidden from the admin reading it in a terminal"
    rejected = box.wait_transfer(forged, "rejected")  # the spool takes files again: the next scan takes it
    assert rejected.status_code == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=2_000), suffix=st.sampled_from([".json", ".zip", ".txt"]))
def test_fuzz_arbitrary_bytes_never_crash_the_checks(raw: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(raw)
        result = inspect_file(path, SENDER, Limits(), datetime.now(UTC))
    assert result.problems and all(p.code in STATUS_OF for p in result.problems)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["envelope", "dossier", "employer", "control", "worker"]),
    key=st.sampled_from([*ENVELOPE_KEYS, "uid", "date", "period", "gross_hourly_wage_chf", "x"]),
    value=json_values,
)
def test_fuzz_mutated_dossiers_get_problems_with_paths_never_values(where: str, key: str, value: object) -> None:
    doc = samples.make_dossier(SENDER, RECIPIENT)
    target = {
        "envelope": doc["envelope"],
        "dossier": doc["dossier"],
        "employer": doc["dossier"]["employer"],
        "control": doc["dossier"]["control"],
        "worker": doc["dossier"]["workers"][0],
    }[where]
    target[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.json"
        path.write_bytes(json.dumps(doc, default=str).encode())
        result = inspect_file(path, SENDER, Limits(), datetime.now(UTC))
    for problem in result.problems:
        assert (problem.code in STATUS_OF and problem.path.startswith("/")) or problem.path == ""
        if isinstance(value, str) and len(value) > 3 and value not in problem.path:
            assert value not in problem.message, "messages never quote the value found"
