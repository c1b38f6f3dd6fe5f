"""The ledger's hot-path statements, built once at import (building a statement costs more than SQLite
running it) and run by gateway.ledger.direct. Parameters are bound by name at execution: ``tid`` a transfer id,
``code`` a status code, …
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import select

from gateway.ledger.models import (
    UNWRITTEN,
    WAITING,
    DirectoryVersion,
    Event,
    MessageId,
    Organ,
    Receipt,
    Route,
    Transfer,
    states_in,
)
from gateway.lifecycle import IN_SPOOL, OPEN, State

TRANSFERS = Transfer.__table__  # type: ignore[attr-defined]
RECEIPTS = Receipt.__table__  # type: ignore[attr-defined]
INSERT_TRANSFER = insert(TRANSFERS)
KNOWN_IDS = select(TRANSFERS.c.id).where(TRANSFERS.c.id.in_(bindparam("ids", expanding=True)))
OWED_WITH_CODE = select(RECEIPTS.c.transfer_id).where(
    RECEIPTS.c.status_code == bindparam("code"), RECEIPTS.c.transfer_id.in_(bindparam("ids", expanding=True))
)
# A step: SET the other parameters, only if the transfer is still in the state the step started from.
MOVE_TRANSFER = (
    update(TRANSFERS)
    .where(TRANSFERS.c.id == bindparam("tid"), TRANSFERS.c.state == bindparam("source"))
    .returning(*TRANSFERS.c)
)
# INSERT … ON CONFLICT DO NOTHING RETURNING (by dialect name): no row back means the key is taken (the row
# count is no use here: psycopg reports -1).
_DIALECTS = {"sqlite": sqlite, "postgresql": postgresql}
_MESSAGE_IDS = MessageId.__table__  # type: ignore[attr-defined]
RESERVE_MESSAGE_ID = {
    n: d.insert(_MESSAGE_IDS).on_conflict_do_nothing().returning(_MESSAGE_IDS.c.transfer_id)
    for n, d in _DIALECTS.items()
}
# A transfer rejected after it reserved its message id (311 after the hold time, a damaged spool) was never
# delivered: it frees the id, so that the sender may send the dossier again under it.
RELEASE_MESSAGE_ID = delete(_MESSAGE_IDS).where(
    _MESSAGE_IDS.c.sender_id == bindparam("sender_id"),
    _MESSAGE_IDS.c.message_id == bindparam("message_id"),
    _MESSAGE_IDS.c.transfer_id == bindparam("transfer_id"),
)
OWE_RECEIPT = {
    n: d.insert(RECEIPTS).on_conflict_do_nothing().returning(RECEIPTS.c.transfer_id) for n, d in _DIALECTS.items()
}
DUE = select(Transfer, Receipt).join(Receipt).where(UNWRITTEN).order_by(Receipt.event_time)
DUE_FOR = DUE.where(Receipt.transfer_id == bindparam("tid"))
# `transfers show`: by message id or transfer id (an index each)
FIND = (
    select(Transfer)
    .where(or_(Transfer.message_id == bindparam("key"), Transfer.id == bindparam("key")))
    .order_by(Transfer.id)  # type: ignore[arg-type]
)
_VERSIONS = DirectoryVersion.__table__  # type: ignore[attr-defined]
DIRECTORY_VERSION = select(_VERSIONS.c.version)
BUMP_DIRECTORY = {
    n: d.insert(_VERSIONS)
    .values(id=1, version=1)
    .on_conflict_do_update(index_elements=[_VERSIONS.c.id], set_={"version": _VERSIONS.c.version + 1})
    for n, d in _DIALECTS.items()
}
ALL_ORGANS = select(Organ.__table__)  # type: ignore[attr-defined]
ALL_ROUTES = select(Route.__table__.c.sender_id, Route.__table__.c.recipient_id)  # type: ignore[attr-defined]
RECEIPT_WRITTEN = (
    update(RECEIPTS)
    .where(RECEIPTS.c.transfer_id == bindparam("tid"), RECEIPTS.c.status_code == bindparam("code"))
    .values(written=True)
)
OLDEST_WORKABLE = (
    select(TRANSFERS.c.id)
    .where(WAITING)  # the predicate of PostgreSQL's claim index, so that it is used
    .where(TRANSFERS.c.next_attempt_at <= bindparam("now"))
    .where(or_(TRANSFERS.c.lease_until.is_(None), TRANSFERS.c.lease_until < bindparam("now")))
    .order_by(TRANSFERS.c.next_attempt_at, TRANSFERS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
CLAIM = (
    update(TRANSFERS)
    .where(TRANSFERS.c.id == OLDEST_WORKABLE)
    .values(lease_until=bindparam("until"), lease_owner=bindparam("owner"))
    .returning(*TRANSFERS.c)
)
DELIVERED_FILES = select(TRANSFERS.c.recipient_id, TRANSFERS.c.delivered_name).where(
    TRANSFERS.c.state == State.DELIVERED.value,
    TRANSFERS.c.recipient_id.is_not(None),
    TRANSFERS.c.delivered_name.is_not(None),
)
# Monitoring (`status`, the metrics endpoint): each through an index, none reading the finished transfers or the
# older events, of which a year keeps 730,000 and 3.7 million
_OPEN = states_in(OPEN)
GAUGE_OPEN = (
    select(TRANSFERS.c.state, func.count(), func.min(TRANSFERS.c.updated_at)).where(_OPEN).group_by(TRANSFERS.c.state)
)
# what each organ has sent that waits in the spool (its upload quota): through the claim index, as the gauges, not
# through the sender's index and its whole history
SPOOLED_BYTES = (
    select(TRANSFERS.c.sender_id, func.coalesce(func.sum(TRANSFERS.c.size), 0))
    .where(states_in(IN_SPOOL))
    .group_by(TRANSFERS.c.sender_id)
)
GAUGE_RETRYING = select(func.count()).select_from(TRANSFERS).where(WAITING, TRANSFERS.c.attempts > 0)
GAUGE_UNWRITTEN = select(func.count(), func.min(RECEIPTS.c.event_time)).select_from(RECEIPTS).where(UNWRITTEN)
_EVENTS = Event.__table__  # type: ignore[attr-defined]
GAUGE_ACTIONS = (
    select(_EVENTS.c.action, func.count()).where(_EVENTS.c.at >= bindparam("since")).group_by(_EVENTS.c.action)
)
