"""The audit trail: one append-only table of events, each carrying ``sha256(previous hash | content)``.

Transitions append their event in their own transaction; the SFTP door appends access events in batches.
Appending is serialised (SQLite's single writer; a transaction-scoped advisory lock on PostgreSQL), and
``verify_chain`` finds any altered or removed row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, text
from sqlmodel import Session, select

from gateway.ledger import direct
from gateway.ledger.models import Event, utc

GENESIS = "0" * 64
_CHAIN_LOCK = 0x464C414D  # "FLAM": advisory lock id of the audit chain on PostgreSQL
_EVENTS = Event.__table__  # type: ignore[attr-defined]
_TAKE_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=_CHAIN_LOCK)
_LAST_HASH = select(_EVENTS.c.hash).order_by(_EVENTS.c.id.desc()).limit(1)
_INSERT_EVENT = insert(_EVENTS)
_VERIFY_BATCH = 10_000
_ID_RANGE = select(func.min(_EVENTS.c.id), func.max(_EVENTS.c.id))  # through the primary key: no count(*) scan


@dataclass(frozen=True)
class AuditEvent:
    """One event waiting to be appended to the audit chain (access events have no transfer)."""

    at: datetime
    action: str
    detail: str
    organ_id: str | None
    ok: bool
    peer: str | None
    transfer_id: str | None = None


class AuditTrail:
    """The audit-chain half of the ledger (mixed into gateway.ledger.store.Ledger, which opens transactions)."""

    is_sqlite: bool
    # who this process acts for: an admin's command names the account that ran it on every event it appends
    # without a peer of its own (a change to the directory, a repair, a purge); `serve` names nobody
    actor: str | None = None
    tx: Callable[[], AbstractContextManager[Session]]
    read: Callable[[], AbstractContextManager[Session]]
    core_read: Callable[[], AbstractContextManager[Connection]]

    def audit(
        self,
        now: datetime,
        action: str,
        detail: str = "",
        *,
        organ_id: str | None = None,
        ok: bool = True,
        peer: str | None = None,
    ) -> None:
        """Append one access event (login, listing, upload, download, removal, admin change)."""
        with self.tx() as s:
            self._append(s, now, action, detail, organ_id=organ_id, ok=ok, peer=peer)

    def audit_many(self, events: Sequence[AuditEvent]) -> None:
        """Append several events in one transaction, in order."""
        rows = [
            new_event(e.at, e.action, e.detail, organ_id=e.organ_id, transfer_id=e.transfer_id, ok=e.ok, peer=e.peer)
            for e in events
        ]
        with self.tx() as s:
            self._chain(s.connection(), rows)

    def events(
        self,
        *,
        organ_id: str | None = None,
        transfer_id: str | None = None,
        limit: int | None = None,
        audit_only: bool = False,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Event]:
        """Events in order, those of ``organ_id`` or ``transfer_id``, with ``action``, at or after ``since`` and
        before ``until``: the filters that are given; with ``limit`` the newest that many."""
        with self.read() as s:
            query = select(Event).order_by(Event.id.desc() if limit else Event.id)  # type: ignore[union-attr]
            if organ_id is not None:
                query = query.where(Event.organ_id == organ_id)
            if transfer_id is not None:
                query = query.where(Event.transfer_id == transfer_id)
            if action is not None:
                query = query.where(Event.action == action)
            if since is not None:
                query = query.where(Event.at >= since)
            if until is not None:
                query = query.where(Event.at < until)
            if audit_only:
                query = query.where(Event.transfer_id.is_(None))  # type: ignore[union-attr]
            if limit is not None:
                query = query.limit(limit)
            rows = list(s.exec(query))
        return sorted(rows, key=lambda e: e.id or 0)

    def actions(self) -> list[str]:
        """Every action the audit trail holds an event of, in order (a scan of the whole trail)."""
        with self.read() as s:
            return list(s.exec(select(Event.action).distinct().order_by(Event.action)))

    def verify_chain(self, progress: Callable[[int, int], None] | None = None) -> tuple[int, list[int]]:
        """Recompute the audit chain; returns (events checked, ids of events that do not match).

        The events stream through in batches (a server-side cursor on PostgreSQL): a year of them is millions.
        ``progress(checked, about)`` hears of each batch; ``about``: the events there are, judged by their ids.
        """
        bad: list[int] = []
        count, prev = 0, None
        with self.core_read() as conn:
            first, last = conn.execute(_ID_RANGE).one()
            about = last - first + 1 if last is not None else 0
            rows = conn.execution_options(yield_per=_VERIFY_BATCH).execute(select(_EVENTS).order_by(_EVENTS.c.id))
            for ev in rows.mappings():
                count += 1
                expected_prev = ev["prev_hash"] if prev is None else prev  # purge moves the chain's start
                if ev["prev_hash"] != expected_prev or ev["hash"] != _event_hash(ev):
                    bad.append(ev["id"])
                prev = ev["hash"]
                if progress is not None and count % _VERIFY_BATCH == 0:
                    progress(count, about)
        if progress is not None:
            progress(count, count)
        return count, bad

    def purge_events(self, before: datetime) -> int:
        with self.tx() as s:
            return s.exec(delete(Event).where(Event.at < before)).rowcount or 0  # type: ignore[call-overload]

    def _append(self, s: Session, now: datetime, action: str, detail: str, **fields: Any) -> None:
        """Append one event (``fields``: those of :func:`new_event`) within the transaction ``s``."""
        self._chain(s.connection(), [new_event(now, action, detail, **fields)])

    def _chain(self, conn: Connection, events: list[dict[str, Any]]) -> None:
        """Link ``events`` to the end of the audit chain (serialised: SQLite's write lock, PG's advisory lock)."""
        if not events:
            return
        if not self.is_sqlite:
            conn.execute(_TAKE_CHAIN_LOCK)
        last = direct.scalar(conn, _LAST_HASH)
        for event in events:
            event["peer"] = event["peer"] or self.actor
            event["prev_hash"] = last or GENESIS
            event["hash"] = last = _event_hash(event)
        direct.execute(conn, _INSERT_EVENT, events)


def new_event(
    at: datetime,
    action: str,
    detail: str,
    *,
    organ_id: str | None = None,
    transfer_id: str | None = None,
    ok: bool = True,
    peer: str | None = None,
) -> dict[str, Any]:
    """An event's columns, not yet linked into the chain (``_chain`` fills in its hashes)."""
    return {
        "at": utc(at),
        "organ_id": organ_id,
        "transfer_id": transfer_id,
        "action": action,
        "detail": detail,
        "ok": ok,
        "peer": peer,
        "prev_hash": "",
        "hash": "",
    }


def _event_hash(ev: Mapping[str, Any]) -> str:
    body = "|".join(
        [
            ev["prev_hash"],
            utc(ev["at"]).isoformat(timespec="microseconds"),
            ev["organ_id"] or "",
            ev["transfer_id"] or "",
            ev["action"],
            ev["detail"],
            "1" if ev["ok"] else "0",
            ev["peer"] or "",
        ]
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()
