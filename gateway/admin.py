"""Admin operations behind the CLI: organs, keys, routes, and the views of transfers and audit events."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.errors import AdminError
from gateway.handlers.parse import shown
from gateway.key_sources import parse_sources, with_sources
from gateway.ledger.models import Event, Organ, Transfer, utc
from gateway.lifecycle import OPEN, State
from gateway.service import Gateway, waiting_at_gateway
from gateway.sftp import hostkeys
from gateway.sftp.hostkeys import HostKey

ORGAN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
ORGAN_NAME_LENGTH = 200  # the ledger's column
KEY_WARNING = timedelta(days=30)  # `organ list` and `fsck` warn this long before a recipient's key stops working


def pgp_key_state(gw: Gateway, fingerprint: str | None) -> str:
    """``usable``, ``expires within 30 days``, or the code of why deliveries cannot be encrypted to it now."""
    now = gw.clock()
    if (problem := gw.keyring.check_recipient(fingerprint, now)) is not None:
        return problem.code
    if gw.keyring.check_recipient(fingerprint, now + KEY_WARNING) is not None:
        return f"expires within {KEY_WARNING.days} days"
    return "usable"


def add_organ(gw: Gateway, organ_id: str, kind: str, name: str, armor: bool = False) -> Organ:
    """Register an organ and create its outbox, inbox and receipts folders."""
    if not ORGAN_ID.fullmatch(organ_id):  # not `match`: its $ takes a final newline
        raise AdminError("ORGAN_ID", f"organ id {organ_id!r} must match {ORGAN_ID.pattern}")
    if not name.strip() or len(name) > ORGAN_NAME_LENGTH or shown(name) != name:
        raise AdminError(
            "ORGAN_NAME",
            f"organ name {shown(name[:ORGAN_NAME_LENGTH])!r} must be 1 to {ORGAN_NAME_LENGTH} printable characters "
            "(no control or text-direction characters)",
        )
    organ = gw.ledger.add_organ(organ_id, kind, name, gw.clock())
    if armor:
        organ = gw.ledger.update_organ(organ_id, gw.clock(), "organ_armor", armor=True)
    gw.folders.create_organ(organ_id)
    return organ


def set_active(gw: Gateway, organ_id: str, active: bool) -> Organ:
    return gw.ledger.update_organ(organ_id, gw.clock(), "organ_enabled" if active else "organ_disabled", active=active)


def uploads_waiting(gw: Gateway) -> list[tuple[Organ, int, int]]:
    """Each organ, the bytes it has waiting at the gateway (read as the SFTP door reads them) and its upload quota
    (0: none)."""
    organs = gw.ledger.organs()
    waiting = waiting_at_gateway(gw.folders, gw.ledger, [o.id for o in organs])
    return [(o, waiting[o.id], o.upload_quota(gw.settings.upload_quota_bytes)) for o in organs]


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(|b|kib|mib|gib|tib)", re.ASCII)  # matched against the size in lower case
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_LARGEST = 2**63 - 1  # the ledger's BIGINT


def set_upload_quota(gw: Gateway, organ_id: str, size: str) -> Organ:
    """Give an organ its own upload quota: a size (``64GiB``, ``1.5GiB``, bytes), ``none`` (or 0) for no quota, or
    ``default`` for the gateway's setting ``upload_quota_bytes`` again."""
    return gw.ledger.update_organ(organ_id, gw.clock(), "organ_quota", upload_quota_bytes=_quota_of(size))


def _quota_of(size: str) -> int | None:
    word = size.strip().lower()
    if word in ("default", "none"):
        return None if word == "default" else 0
    if (match := _SIZE.fullmatch(word)) is not None:
        exact = Decimal(match[1]) * _UNITS[match[2]]
        if exact == int(exact) and exact <= _LARGEST:
            return int(exact)
    raise AdminError(
        "QUOTA_INVALID",
        f"{size!r} is not a size: whole bytes, or a number with KiB, MiB, GiB or TiB (500MiB, 1.5GiB, 64GiB), at most "
        "8 EiB; 'none' (or 0) for no quota; 'default' for the gateway's setting (upload_quota_bytes)",
    )


def import_pgp_key(gw: Gateway, organ_id: str, file: Path) -> str:
    """Import an organ's armored public key after checking it can encrypt; returns its fingerprint."""
    gw.ledger.organ(organ_id)
    info = gw.keyring.import_key(_read_text(file), gw.clock())
    gw.ledger.update_organ(organ_id, gw.clock(), "pgp_key_imported", pgp_fingerprint=info.fingerprint)
    return info.fingerprint


def remove_pgp_key(gw: Gateway, organ_id: str) -> str:
    """Withdraw an organ's public key (lost or compromised); its dossiers are held (601) until a new one."""
    organ = gw.ledger.organ(organ_id)
    if organ.pgp_fingerprint is None:
        raise AdminError("KEY_UNKNOWN", f"organ {organ_id} has no OpenPGP key")
    gw.ledger.update_organ(organ_id, gw.clock(), "pgp_key_removed", pgp_fingerprint=None)
    if not any(o.pgp_fingerprint == organ.pgp_fingerprint for o in gw.ledger.organs()):
        gw.keyring.remove_key(organ.pgp_fingerprint)
    return organ.pgp_fingerprint


def add_ssh_key(gw: Gateway, organ_id: str, file: Path, sources: str = "") -> str:
    """Store an OpenSSH public key an organ may log in with, from the addresses or networks ``sources`` only
    (comma-separated; '' for any address); returns its SHA256 fingerprint."""
    import asyncssh  # imported where used: `serve` loads it in the SFTP door process only

    try:
        sources = parse_sources(sources) if sources else ""
    except ValueError as exc:
        raise AdminError(
            "SSH_KEY_FROM_INVALID",
            f"--from {sources!r}: {exc} (addresses or networks separated by commas: 192.0.2.7, 192.0.2.0/24, "
            "2001:db8::/32; a '!' before one excludes it)",
        ) from None

    text = _read_text(file)
    if "PRIVATE KEY" in text:
        raise AdminError(
            "SSH_KEY_PRIVATE",
            f"{file} is a private key: ask the organ for its public key (the .pub file); a private key that has "
            "left its owner should be replaced",
        )
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise AdminError("SSH_KEY_INVALID", f"{file} is not an OpenSSH public key: {exc}") from exc
    fingerprint = key.get_fingerprint("sha256")
    line = key.export_public_key("openssh").decode("ascii").strip()
    gw.ledger.add_ssh_key(organ_id, fingerprint, with_sources(line, sources), gw.clock())
    return fingerprint


def add_gateway_key(gw: Gateway) -> str:
    """A new gateway key pair beside the one that signs; returns its fingerprint (it signs once `use`d)."""
    fingerprint = gw.keyring.add_gateway_key()
    gw.ledger.audit(gw.clock(), "gateway_key_added", f"{fingerprint}; does not sign yet")
    return fingerprint


def use_gateway_key(gw: Gateway, fingerprint: str) -> tuple[str, str]:
    """Make the gateway key ``fingerprint`` sign every delivery from now on; returns (it, the key before)."""
    now_signing, before = gw.keyring.use_gateway_key(fingerprint)
    gw.ledger.audit(gw.clock(), "gateway_key_used", f"{now_signing} signs deliveries; {before} did")
    return now_signing, before


def remove_gateway_key(gw: Gateway, fingerprint: str) -> None:
    """Destroy a gateway key pair that no longer signs."""
    gw.ledger.audit(gw.clock(), "gateway_key_removed", gw.keyring.remove_gateway_key(fingerprint))


def add_host_key(gw: Gateway, key_type: str) -> HostKey:
    """A new SSH host key of ``key_type`` (ed25519, rsa) that the door announces, and presents once `use`d."""
    key = hostkeys.add_host_key(gw.folders.hostkeys, key_type, gw.clock())
    gw.ledger.audit(gw.clock(), "host_key_added", f"{key.algorithm} {key.fingerprint}; announced, not presented yet")
    return key


def use_host_key(gw: Gateway, fingerprint: str) -> tuple[HostKey, HostKey]:
    """Make the door present the host key ``fingerprint``; returns (it, the key of its algorithm before)."""
    key, before = hostkeys.use_host_key(gw.folders.hostkeys, fingerprint)
    if key != before:
        gw.ledger.audit(
            gw.clock(), "host_key_used", f"{key.algorithm} {key.fingerprint} presented; {before.fingerprint} announced"
        )
    return key, before


def remove_host_key(gw: Gateway, fingerprint: str) -> HostKey:
    """Destroy an SSH host key the door does not present."""
    key = hostkeys.remove_host_key(gw.folders.hostkeys, fingerprint)
    gw.ledger.audit(gw.clock(), "host_key_removed", f"{key.algorithm} {key.fingerprint}")
    return key


def transfer_row(t: Transfer) -> dict[str, Any]:
    """The JSON shape of one transfer in `transfers list --json`."""
    return {
        "id": t.id,
        "message_id": t.message_id,
        "dossier_id": t.dossier_id,
        "sender_id": t.sender_id,
        "recipient_id": t.recipient_id,
        "message_type": t.message_type,
        "state": t.state,
        "status_code": t.status_code,
        "file": t.file_name,
        "delivered_name": t.delivered_name,
        "test": t.test,
        "size": t.size,
        "sha256": t.sha256,
        "attempts": t.attempts,
        "last_error": t.last_error,
        "created_at": utc(t.created_at).isoformat(),
        "updated_at": utc(t.updated_at).isoformat(),
    }


def check_window(since: datetime | None, until: datetime | None) -> None:
    """Refuse a window of time that ends before it starts (TIME_WINDOW): it would show nothing, as if nothing had
    happened."""
    if since is not None and until is not None and since >= until:
        raise AdminError(
            "TIME_WINDOW", f"--since {utc(since).isoformat()} is not before --until {utc(until).isoformat()}"
        )


def exchange_stats(gw: Gateway, since: datetime, until: datetime, organ_id: str | None = None) -> dict[str, Any]:
    """What went where between ``since`` and ``until`` (by the time each file was received), for `transfers stats`:
    per sender and recipient how many were received, delivered, picked up, expired, rejected and are still open,
    and the bytes delivered; and each sender's rejections by status code. ``organ_id``: only those it sent or got."""
    check_window(since, until)
    routes: dict[tuple[str, str], dict[str, Any]] = {}
    rejections: dict[tuple[str, int], int] = {}
    for sender, recipient, state, code, count, size in gw.ledger.transfer_counts(since, until):
        if organ_id is not None and organ_id not in (sender, recipient):
            continue
        row = routes.setdefault((sender, recipient or ""), dict.fromkeys(STATS_COLUMNS, 0))
        row["received"] += count
        if state in _DELIVERED:
            row["delivered"] += count
            row["bytes_delivered"] += int(size)  # a numeric sum on some databases
        if column := _COUNTED_AS.get(State(state)):
            row[column] += count
        if state == State.REJECTED and code is not None:
            rejections[(sender, code)] = rejections.get((sender, code), 0) + count
    return {
        "since": utc(since).isoformat(),
        "until": utc(until).isoformat(),
        "routes": [{"sender_id": s, "recipient_id": r or None, **row} for (s, r), row in sorted(routes.items())],
        "rejections": [
            {"sender_id": s, "status_code": code, "count": n} for (s, code), n in sorted(rejections.items())
        ],
    }


# `transfers stats`: a route's columns. Delivered counts every dossier that reached the inbox (waiting there,
# picked up or expired); open, those on their way (held ones included).
STATS_COLUMNS = ("received", "delivered", "picked_up", "expired", "rejected", "open", "bytes_delivered")
_DELIVERED = frozenset({State.DELIVERED, State.FETCHED, State.EXPIRED})
_COUNTED_AS = {
    State.FETCHED: "picked_up",
    State.EXPIRED: "expired",
    State.REJECTED: "rejected",
    **dict.fromkeys(OPEN - _DELIVERED, "open"),
}


def event_row(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": utc(e.at).isoformat(),
        "organ_id": e.organ_id,
        "transfer_id": e.transfer_id,
        "action": e.action,
        "detail": e.detail,
        "ok": e.ok,
        "peer": e.peer,
        "hash": e.hash,
    }


def timeline(gw: Gateway, key: str) -> list[dict[str, Any]]:
    """Every transfer carrying message id (or transfer id) ``key``, each with its events in order."""
    transfers = gw.ledger.find_transfers(key)
    if not transfers:
        raise AdminError("TRANSFER_UNKNOWN", f"no transfer with message id or transfer id {key!r}")
    return [
        {**transfer_row(t), "events": [event_row(e) for e in gw.ledger.events(transfer_id=t.id)]} for t in transfers
    ]


def _read_text(file: Path) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError("FILE_UNREADABLE", f"cannot read {file}: {exc}") from exc
