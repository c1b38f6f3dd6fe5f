"""One step of a dossier's life: from the state the ledger says it is in to the next one.

``advance`` runs the handlers for the transfer's current state and returns the :class:`Step` to record;
it never writes the ledger (the worker records the step) and knows nothing of SFTP or the watcher.
Every step is safe to redo after a crash: names are deterministic and files are only renamed into place.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import Held, Problem
from gateway.folders import Folders, sha256_of
from gateway.handlers.deliver import deliver, delivery_name
from gateway.handlers.encrypt import Crypto, encrypt
from gateway.handlers.inspect import envelope_of, inspect_file
from gateway.handlers.receipt import STATUS_INFO
from gateway.handlers.route import Directory, route_problems
from gateway.lifecycle import State
from gateway.limits import Limits


@dataclass(frozen=True)
class Context:
    """The ports a step may use, and the moment it runs at."""

    directory: Directory
    crypto: Crypto
    folders: Folders
    limits: Limits
    now: datetime
    hold: timedelta


@dataclass(frozen=True)
class Step:
    """What the ledger should record: the next state, transfer fields, and the receipt's reasons."""

    target: State
    values: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    info: str = ""


class TransferView(Protocol):
    """The transfer fields a step reads (gateway.ledger.models.Transfer has them)."""

    id: str
    sender_id: str
    file_name: str
    state: str
    message_id: str | None
    recipient_id: str | None
    encrypted_to: str | None
    form: str | None
    sha256: str
    updated_at: datetime


def advance(transfer: TransferView, ctx: Context) -> Step | None:
    """The next step for ``transfer``, or None when it must wait (held, recipient still without a key)."""
    state = State(transfer.state)
    if state is State.RECEIVED:
        return validate(transfer, ctx)
    if state is State.VALIDATED:
        return encrypt_step(transfer, ctx)
    if state is State.ENCRYPTED:
        return deliver_step(transfer, ctx)
    if state is State.HELD:
        return retry_held(transfer, ctx)
    raise ValueError(f"no step runs from state {state.value}")


def validate(transfer: TransferView, ctx: Context) -> Step:
    """RECEIVED -> VALIDATED, or REJECTED with every problem found."""
    path = ctx.folders.spooled(transfer.sender_id, transfer.id, transfer.file_name)
    mode = path.lstat().st_mode
    if not stat.S_ISREG(mode):
        return rejected_for("FILE_NOT_REGULAR", "", "only regular files are accepted (no folders, links or pipes)")
    inspection = inspect_file(path, transfer.sender_id, ctx.limits, ctx.now, transfer.file_name)
    envelope = envelope_of(inspection.parsed) if inspection.parsed else {}
    problems = list(inspection.problems)
    if not any(p.code == "SENDER_MISMATCH" for p in problems):
        problems += route_problems(transfer.sender_id, envelope.get("recipient_id"), ctx.directory)
    values = _envelope_values(envelope)
    if problems:  # unless the gateway's copy is to blame (encrypt_step checks every copy it signs)
        return spool_damage(transfer, path) or Step(
            State.REJECTED, values=values, problems=problems, info=_summary(problems)
        )
    values["form"] = inspection.parsed.form if inspection.parsed else None
    return Step(State.VALIDATED, values=values)


def encrypt_step(transfer: TransferView, ctx: Context) -> Step:
    """VALIDATED -> ENCRYPTED (signed for the recipient in the private spool), or HELD (601)."""
    recipient = ctx.directory.find_organ(transfer.recipient_id or "")
    src = ctx.folders.spooled(transfer.sender_id, transfer.id, transfer.file_name)
    closed = route_closed(transfer, ctx) or spool_damage(transfer, src)
    if closed is not None:
        return closed
    fingerprint = getattr(recipient, "pgp_fingerprint", None)
    try:
        encrypt(
            src,
            ctx.folders.encrypted(transfer.id),
            fingerprint,
            ctx.crypto,
            ctx.now,
            bool(getattr(recipient, "armor", False)),
        )
    except Held as held:
        return Step(State.HELD, problems=[held.problem], info=f"{STATUS_INFO[601]}: {held.problem.message}")
    return Step(State.ENCRYPTED, values={"encrypted_to": fingerprint})


def deliver_step(transfer: TransferView, ctx: Context) -> Step:
    """ENCRYPTED -> DELIVERED: the encryption appears in the recipient's inbox atomically (100); or REJECTED
    when, since it was encrypted (its delivery failed and waited for a retry), the route closed (301, 310) or the
    recipient's key was withdrawn or replaced (311), unless it is in the inbox already (a redo after a crash: its
    spool copy is gone once the rename happened)."""
    encrypted = ctx.folders.encrypted(transfer.id)
    recipient = ctx.directory.find_organ(transfer.recipient_id or "")
    if encrypted.exists() and (closed := route_closed(transfer, ctx) or key_changed(transfer, recipient)):
        return closed
    name = delivery_name(
        transfer.sender_id,
        transfer.message_id or transfer.id,
        transfer.form or "json",
        bool(getattr(recipient, "armor", False)),
    )
    deliver(encrypted, ctx.folders.inbox(transfer.recipient_id or "") / name)
    return Step(State.DELIVERED, values={"delivered_name": name}, info=STATUS_INFO[100])


def retry_held(transfer: TransferView, ctx: Context) -> Step | None:
    """HELD -> VALIDATED once the recipient's key is usable, REJECTED (311) after the hold time, or at once (301,
    310) when the admin has since disabled the recipient or denied the route."""
    if closed := route_closed(transfer, ctx):
        return closed
    recipient = ctx.directory.find_organ(transfer.recipient_id or "")
    problem = ctx.crypto.check_recipient(getattr(recipient, "pgp_fingerprint", None), ctx.now)
    if problem is None:
        return Step(State.VALIDATED, info="recipient key usable again")
    if ctx.now - transfer.updated_at >= ctx.hold:
        return Step(State.REJECTED, problems=[problem], info=f"held too long: {problem.message}")
    return None


def route_closed(transfer: TransferView, ctx: Context) -> Step | None:
    """REJECTED (301, 310) when the route the dossier passed at validation is closed now: the admin disabled the
    recipient or denied the route while the dossier waited (held for a key) or was on its way."""
    problems = route_problems(transfer.sender_id, transfer.recipient_id, ctx.directory)
    return Step(State.REJECTED, problems=problems, info=_summary(problems)) if problems else None


def key_changed(transfer: TransferView, recipient: Any) -> Step | None:
    """REJECTED (311) when the recipient's key is no longer the one the dossier was encrypted to: the admin withdrew
    it (lost, compromised) or replaced it while the delivery waited. The plaintext is gone by then, so the dossier
    cannot be encrypted again; the sender sends it again (its message id is free)."""
    if transfer.encrypted_to is None or getattr(recipient, "pgp_fingerprint", None) == transfer.encrypted_to:
        return None  # (None: encrypted by a version that did not record the key)
    return rejected_for(
        "RECIPIENT_KEY_CHANGED",
        "/envelope/recipient_id",
        "the recipient's OpenPGP key was withdrawn or replaced after the dossier was encrypted to it: nothing was "
        "delivered; send the dossier again",
    )


def spool_damage(transfer: TransferView, path: Path) -> Step | None:
    """REJECTED (500, SPOOL_DAMAGED) when the spooled file no longer has the SHA-256 that intake recorded.

    The plaintext may wait in the spool for days (held for a key, the gateway stopped); a disk fault or a hand
    in the spool must not reach the recipient as the sender's dossier, nor earn the sender a wrong reason.
    """
    if not transfer.sha256 or sha256_of(path) == transfer.sha256:
        return None
    return rejected_for(
        "SPOOL_DAMAGED",
        "",
        "the gateway's copy of the file changed after it was received (its SHA-256 no longer matches): "
        "nothing was delivered; send the dossier again",
    )


def rejected_for(code: str, path: str, message: str) -> Step:
    """REJECTED for the one problem ``code`` at the JSON ``path``; its message is the step's info too."""
    return Step(State.REJECTED, problems=[Problem(code, path, message)], info=message)


def spool_paths(transfer: TransferView, folders: Folders) -> tuple[Path, Path]:
    """The plaintext and encrypted spool files of a transfer."""
    return folders.spooled(transfer.sender_id, transfer.id, transfer.file_name), folders.encrypted(transfer.id)


def _envelope_values(envelope: dict[str, Any]) -> dict[str, Any]:
    def text(key: str, limit: int) -> str | None:
        value = envelope.get(key)
        return value if isinstance(value, str) and 0 < len(value) <= limit else None

    return {
        "message_id": text("message_id", 36),
        "dossier_id": text("dossier_id", 64),
        "message_type": text("message_type", 32),
        "recipient_id": text("recipient_id", 63),
        "test": envelope.get("test") is True,
    }


def _summary(problems: list[Problem]) -> str:
    first = problems[0].message
    return first if len(problems) == 1 else f"{first} (and {len(problems) - 1} more problem(s))"
