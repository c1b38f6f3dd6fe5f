"""A ledger as months of nights leave it: one real night's rows copied back in time.

Benchmarks and tests use it to ask what an old ledger costs (fsck, audit verify, purge, the maintenance round,
the next night's batch) without running the gateway for a year. The copies are what the night left, with new
transfer and message ids, their times moved back a day per night; the audit trail is relinked from its start in
time order, as a year of appends would have left it.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, text

from gateway.ledger.chain import AuditEvent
from gateway.ledger.models import Event, MessageId, Receipt, Transfer, utc
from gateway.ledger.store import Ledger

_TABLES = {t.name: t for t in (Transfer.__table__, Receipt.__table__, MessageId.__table__, Event.__table__)}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class History:
    """What :func:`age_ledger` added."""

    nights: int
    transfers: int
    receipts: int
    events: int


def age_ledger(ledger: Ledger, nights: int, per_night: int) -> History:
    """Give ``ledger`` ``nights`` earlier nights of ``per_night`` transfers each, copied from the transfers it
    holds (one night's, all finished: the template) with their receipts, message ids and audit events.

    Events older than the template's first transfer (the admin's setup) move before the oldest night. Run it
    while no gateway uses the ledger.
    """
    template = _read(ledger)
    if not template["transfer"]:
        raise ValueError("the ledger holds no transfers to copy")
    first = min(utc(t["created_at"]) for t in template["transfer"])
    setup = [e for e in template["event"] if utc(e["at"]) < first]
    night = [e for e in template["event"] if utc(e["at"]) >= first]
    copies = -(-per_night // len(template["transfer"]))
    with ledger.engine.begin() as conn:
        conn.execute(delete(_TABLES["event"]))
    ledger.audit_many([_moved_event(e, timedelta(days=nights + 1), {}) for e in setup])
    added = History(nights, 0, 0, 0)
    for age in range(nights, 0, -1):
        shift = timedelta(days=age)
        rows: dict[str, list[dict[str, Any]]] = {"transfer": [], "receipt": [], "messageid": []}
        events: list[AuditEvent] = []
        for _ in range(copies):
            ids = _copy_night(template, shift, rows)
            events += [_moved_event(e, shift, ids) for e in night]
        rows["transfer"] = rows["transfer"][:per_night]
        kept = {t["id"] for t in rows["transfer"]}
        for name in ("receipt", "messageid"):
            rows[name] = [r for r in rows[name] if r["transfer_id"] in kept]
        events = sorted((e for e in events if e.transfer_id is None or e.transfer_id in kept), key=lambda e: e.at)
        with ledger.engine.begin() as conn:
            for name, values in rows.items():
                if values:
                    conn.execute(insert(_TABLES[name]), values)
        ledger.audit_many(events)
        added = History(
            nights, added.transfers + len(kept), added.receipts + len(rows["receipt"]), added.events + len(events)
        )
    ledger.audit_many([_moved_event(e, timedelta(0), {}) for e in night])
    if not ledger.is_sqlite:  # the statistics a year of autovacuum would have kept (the planner's choices need them)
        with ledger.engine.begin() as conn:
            conn.execute(text(f"ANALYZE {', '.join(_TABLES)}"))
    return added


def _read(ledger: Ledger) -> dict[str, list[dict[str, Any]]]:
    with ledger.engine.connect() as conn:
        return {
            name: [dict(row._mapping) for row in conn.execute(select(table).order_by(*table.primary_key))]
            for name, table in _TABLES.items()
        }


def _copy_night(
    template: dict[str, list[dict[str, Any]]], shift: timedelta, rows: dict[str, list[dict[str, Any]]]
) -> dict[str, str]:
    """Add one copy of the template's transfers, receipts and message ids, ``shift`` earlier, to ``rows``;
    returns the new transfer id of each template transfer."""
    ids: dict[str, str] = {}
    messages: dict[str, str] = {}
    for t in template["transfer"]:
        created = utc(t["created_at"]) - shift
        new_id = ids[t["id"]] = f"{int(created.timestamp() * 1000):012x}{secrets.token_hex(10)}"
        copy = {**t, "id": new_id, "lease_until": None, "lease_owner": None}
        for column in ("created_at", "updated_at", "next_attempt_at"):
            copy[column] = utc(t[column]) - shift
        if t["message_id"]:
            messages[t["message_id"]] = copy["message_id"] = str(uuid.uuid4())
            if t["delivered_name"]:
                copy["delivered_name"] = t["delivered_name"].replace(t["message_id"], copy["message_id"])
        rows["transfer"].append(copy)
    rows["receipt"] += [
        {**r, "transfer_id": ids[r["transfer_id"]], "event_time": utc(r["event_time"]) - shift}
        for r in template["receipt"]
    ]
    rows["messageid"] += [
        {**m, "message_id": messages[m["message_id"]], "transfer_id": ids[m["transfer_id"]]}
        for m in template["messageid"]
        if m["message_id"] in messages
    ]
    return ids


def _moved_event(event: dict[str, Any], shift: timedelta, ids: dict[str, str]) -> AuditEvent:
    transfer_id = event["transfer_id"]
    return AuditEvent(
        at=utc(event["at"]) - shift,
        action=event["action"],
        detail=event["detail"],
        organ_id=event["organ_id"],
        ok=event["ok"],
        peer=event["peer"],
        transfer_id=ids.get(transfer_id, transfer_id) if transfer_id else None,
    )
