"""The ledger's hot-path statements, built once at import (building a statement costs more than SQLite
running it). Parameters are bound by name at execution: ``tid`` a transfer id, ``code`` a status code, …
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, or_, update
from sqlmodel import select

from gateway import lifecycle
from gateway.ledger.models import MessageId, Organ, Receipt, Route, Transfer

TRANSFERS = Transfer.__table__  # type: ignore[attr-defined]
RECEIPTS = Receipt.__table__  # type: ignore[attr-defined]
LOCK_TRANSFER = select(TRANSFERS).where(TRANSFERS.c.id == bindparam("tid")).with_for_update()
CHANGE_TRANSFER = update(TRANSFERS).where(TRANSFERS.c.id == bindparam("tid"))  # SET: the other parameters
RESERVE_MESSAGE_ID = insert(MessageId.__table__)  # type: ignore[attr-defined]
RECEIPT_OWED = select(RECEIPTS.c.status_code).where(
    RECEIPTS.c.transfer_id == bindparam("tid"), RECEIPTS.c.status_code == bindparam("code")
)
OWE_RECEIPT = insert(RECEIPTS)
DUE = select(Transfer, Receipt).join(Receipt).where(Receipt.written == False).order_by(Receipt.event_time)  # noqa: E712
DUE_FOR = DUE.where(Receipt.transfer_id == bindparam("tid"))
ORGAN = select(Organ.__table__).where(Organ.__table__.c.id == bindparam("oid"))  # type: ignore[attr-defined]
ROUTE = select(Route.__table__.c.sender_id).where(  # type: ignore[attr-defined]
    Route.__table__.c.sender_id == bindparam("sender"),  # type: ignore[attr-defined]
    Route.__table__.c.recipient_id == bindparam("recipient"),  # type: ignore[attr-defined]
)
RECEIPT_WRITTEN = (
    update(RECEIPTS)
    .where(RECEIPTS.c.transfer_id == bindparam("tid"), RECEIPTS.c.status_code == bindparam("code"))
    .values(written=True)
)
OLDEST_WORKABLE = (
    select(TRANSFERS.c.id)
    .where(TRANSFERS.c.state.in_([st.value for st in lifecycle.WORKABLE]))
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
