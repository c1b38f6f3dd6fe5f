"""What the admin's views, monitoring, maintenance and the SFTP door's quota read of the transfers: queries that
change nothing (mixed into gateway.ledger.store.Ledger, which opens the connections)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import Connection, func, or_
from sqlmodel import Session, select

from gateway.health import Gauges
from gateway.ledger import statements as sql
from gateway.ledger.models import Transfer, utc
from gateway.lifecycle import State


class TransferQueries:
    """Reads of the transfer table for people and monitoring; the steps of a dossier's life are the ledger's own."""

    read: Callable[[], AbstractContextManager[Session]]
    core_read: Callable[[], AbstractContextManager[Connection]]

    def transfers(
        self,
        *,
        organ_id: str | None = None,
        state: str | None = None,
        states: Sequence[State] = (),
        changed_before: datetime | None = None,
        received_since: datetime | None = None,
        received_until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Transfer]:
        """Transfers by id, of one organ (as sender or recipient), in ``state`` or ``states``, last changed at or
        before ``changed_before``, received from ``received_since`` and before ``received_until``, the newest
        ``limit`` of them: those filters that are given."""
        with self.read() as s:
            query = select(Transfer).order_by(Transfer.id.desc() if limit else Transfer.id)  # type: ignore[union-attr]
            if organ_id is not None:
                query = query.where(or_(Transfer.sender_id == organ_id, Transfer.recipient_id == organ_id))
            if state is not None:
                query = query.where(Transfer.state == state)
            if changed_before is not None:
                query = query.where(Transfer.updated_at <= changed_before)
            if received_since is not None:
                query = query.where(Transfer.created_at >= received_since)
            if received_until is not None:
                query = query.where(Transfer.created_at < received_until)
            if states:
                query = query.where(Transfer.state.in_([st.value for st in states]))  # type: ignore[attr-defined]
            if limit is not None:
                query = query.limit(limit)
            rows = list(s.exec(query))
        return rows[::-1] if limit else rows

    def delivered_files(self) -> list[tuple[str, str]]:
        """(recipient, file name in its inbox) of every delivery not yet picked up: two columns, no ORM objects
        (maintenance asks for them every ``rescan_seconds``, and a night's backlog can be tens of thousands)."""
        with self.core_read() as conn:
            return [(recipient, name) for recipient, name in conn.execute(sql.DELIVERED_FILES)]

    def delivered_as(self, recipient_id: str, name: str) -> Transfer | None:
        """The delivered transfer whose file in ``recipient_id``'s inbox is called ``name``."""
        with self.read() as s:
            query = select(Transfer).where(
                Transfer.recipient_id == recipient_id,
                Transfer.delivered_name == name,
                Transfer.state == State.DELIVERED.value,
            )
            return s.exec(query).first()

    def find_transfers(self, key: str) -> list[Transfer]:
        """Transfers whose message id or transfer id is ``key``."""
        with self.read() as s:
            return list(s.exec(sql.FIND, params={"key": key}))  # type: ignore[call-overload]

    def gauges(self, since: datetime) -> Gauges:
        """The transfers whose life is not over (by state, with the oldest's last move), those retrying, the
        receipts not yet written, and the audit actions since ``since`` (statements.GAUGE_*: an index each)."""
        with self.core_read() as conn:
            by_state = conn.execute(sql.GAUGE_OPEN).all()
            retrying = conn.execute(sql.GAUGE_RETRYING).scalar_one()
            unwritten, owed_since = conn.execute(sql.GAUGE_UNWRITTEN).one()
            actions = conn.execute(sql.GAUGE_ACTIONS, {"since": since}).all()
        return Gauges(
            open_transfers={state: (n, utc(oldest)) for state, n, oldest in by_state},
            retrying=retrying,
            receipts_unwritten=(unwritten, utc(owed_since) if owed_since else None),
            actions={action: n for action, n in actions},
        )

    def transfer_counts(
        self, since: datetime, until: datetime
    ) -> list[tuple[str, str | None, str, int | None, int, int]]:
        """Transfers received in [``since``, ``until``): (sender, recipient, state, status code, how many, bytes) for
        each such combination."""
        columns = (Transfer.sender_id, Transfer.recipient_id, Transfer.state, Transfer.status_code)
        with self.read() as s:
            query = (
                select(*columns, func.count(), func.coalesce(func.sum(Transfer.size), 0))  # type: ignore[call-overload]
                .where(Transfer.created_at >= since, Transfer.created_at < until)
                .group_by(*columns)
            )
            return [tuple(row) for row in s.exec(query)]

    def spooled_bytes(self) -> dict[str, int]:
        """The bytes of each organ's files that the gateway holds in its spool (received, not yet delivered or
        rejected): the part of the organs' upload quotas that the ledger knows."""
        with self.core_read() as conn:
            return {sender: int(size) for sender, size in conn.execute(sql.SPOOLED_BYTES)}

    def count_by_state(self) -> dict[str, int]:
        with self.read() as s:
            rows = s.exec(select(Transfer.state, func.count()).group_by(Transfer.state))  # type: ignore[call-overload]
            return {state: n for state, n in rows}
