"""Compare the ledger with the folders, report every difference, and repair what can be repaired safely.

Repairs are the same idempotent steps the service runs at start-up (record spool files, tidy finished
transfers, write owed receipts, notice pick-ups); a difference no step can explain is reported for the
admin and left alone. Run it with the service stopped, or without ``--repair`` while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.admin import pgp_key_state
from gateway.errors import AdminError
from gateway.folders import is_temp_name, partial_name_of
from gateway.lifecycle import OPEN, WORKABLE, State
from gateway.pipeline import spool_damage, spool_paths
from gateway.service import Gateway

# The transfers fsck compares with the folders: those whose life is not over (deliveries included). A finished
# one has nothing on disk left to compare, and a year of them is 730,000 rows.
_OPEN = sorted(OPEN)


@dataclass(frozen=True)
class Finding:
    """One difference between the ledger and the disk."""

    kind: str
    path: str
    transfer_id: str | None
    repaired: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fsck(gw: Gateway, repair: bool = False, progress: Callable[[int, int], None] | None = None) -> list[Finding]:
    """Every difference between ledger and folders (repaired where ``repair`` and a safe step exists); repairs
    only while no `serve` runs on the data dir (its work in progress would look like leftovers). ``progress``:
    the audit chain's check, the longest part (see Ledger.verify_chain)."""
    if repair and (pid := gw.folders.serving_pid()) is not None:
        raise AdminError(
            "DATA_DIR_IN_USE", f"serve (pid {pid}) runs on {gw.folders.root}: stop it before `fsck --repair`"
        )
    findings: list[Finding] = []
    worker = gw.worker()

    def found(kind: str, path: Path | str, transfer_id: str | None, fixable: bool, detail: str) -> None:
        findings.append(Finding(kind, str(path), transfer_id, repair and fixable, detail))

    for path in gw.folders.temp_files():
        try:
            name = partial_name_of(path) if path.lstat().st_size else None  # an empty one is swept
        except FileNotFoundError:  # done meanwhile (serve runs)
            continue
        if name is not None:
            found(
                "partial_upload", path, None, True, f"a partial upload a killed run left open: kept as {name} to resume"
            )
        else:
            found("temp_file", path, None, True, "left by an interrupted run")
    for sender_dir in gw.folders.spool_in.iterdir():
        for path in sender_dir.iterdir():
            transfer = gw.ledger.transfer(path.name.partition(".")[0])
            if transfer is None:
                found("spool_unrecorded", path, None, True, "collected but not recorded: will be recorded RECEIVED")
            elif State(transfer.state) not in (State.RECEIVED, State.VALIDATED, State.HELD):
                found("spool_leftover", path, transfer.id, True, f"plaintext of a {transfer.state} transfer")
    for transfer in gw.ledger.transfers(states=_OPEN):
        plain, encrypted = spool_paths(transfer, gw.folders)
        state = State(transfer.state)
        if state in (State.RECEIVED, State.VALIDATED, State.HELD):
            if not plain.exists() and not plain.is_symlink():
                found("spool_missing", plain, transfer.id, False, f"{state.value} transfer without its spooled file")
            elif plain.is_file() and not plain.is_symlink() and spool_damage(transfer, plain):
                found("spool_damaged", plain, transfer.id, False, "changed since it was received: will be rejected 500")
        if state is State.ENCRYPTED and not encrypted.exists():
            inbox = gw.folders.inbox(transfer.recipient_id or "")
            if not any(inbox.glob(f"{transfer.sender_id}_{transfer.message_id}.*")):
                found("encrypted_missing", encrypted, transfer.id, False, "encrypted transfer without its file")
        if state is State.DELIVERED:
            inbox_file = gw.folders.inbox(transfer.recipient_id or "") / (transfer.delivered_name or "")
            if not inbox_file.exists():
                found("picked_up_unnoticed", inbox_file, transfer.id, True, "delivery gone from the inbox: FETCHED")
        if state in WORKABLE and transfer.attempts:
            found("retrying", "", transfer.id, False, f"{transfer.attempts} failed attempt(s): {transfer.last_error}")
    delivered = set(gw.ledger.delivered_files())
    for inbox in gw.folders.organs.glob("*/inbox"):
        for path in inbox.iterdir():
            if not is_temp_name(path.name) and (inbox.parent.name, path.name) not in delivered:
                found("inbox_unknown", path, None, False, "in an inbox but not a current delivery in the ledger")
    for due in gw.ledger.due_receipts():
        found(
            "receipt_unwritten",
            gw.folders.receipts(due.transfer.sender_id),
            due.transfer.id,
            True,
            f"receipt {due.receipt.status_code} recorded but not written",
        )
    for recipient in sorted({route.recipient_id for route in gw.ledger.routes()}):
        fingerprint = gw.ledger.organ(recipient).pgp_fingerprint
        if (state := pgp_key_state(gw, fingerprint)) != "usable":
            found("pgp_key", recipient, None, False, f"{recipient}'s OpenPGP key {fingerprint or ''}: {state}")
    count, bad = gw.ledger.verify_chain(progress)
    for event_id in bad:
        found("audit_chain", f"event {event_id}", None, False, f"audit event altered ({count} checked)")
    if repair and findings:
        gw.recover()
        worker.write_receipts()
    return findings
