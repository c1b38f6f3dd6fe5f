"""The only code that writes state: the ledger's transactions, claims, lifecycle transitions and receipts due.

SQLite (default) and PostgreSQL behave the same here: SQLite's quirks are handled in gateway.ledger.sqlite.
Its other parts are mixed in: organs, SSH keys and routes (gateway.ledger.directory), the hash-chained audit trail
(gateway.ledger.chain), and the reads of the transfers that change nothing, for the admin's views, monitoring and
the door's quota (gateway.ledger.queries). PostgreSQL claims with ``SKIP LOCKED``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, inspect, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine, select

from gateway import lifecycle
from gateway.config import without_password
from gateway.errors import GatewayFault, Problem, status_for
from gateway.ledger import direct
from gateway.ledger import statements as sql
from gateway.ledger.chain import AuditTrail, new_event
from gateway.ledger.directory import DirectorySnapshot, OrganDirectory
from gateway.ledger.models import (
    Receipt,
    ReceiptData,
    Transfer,
    TransferData,
    utc,
)
from gateway.ledger.queries import TransferQueries
from gateway.ledger.sqlite import SqliteWriter, reading, sqlite_engine
from gateway.lifecycle import State


class StaleTransition(Exception):
    """The transfer is no longer in the state a step started from (another worker or a redo moved it)."""


class _DuplicateMessageId(Exception):
    """The message id a step would reserve is taken by another transfer of the same sender."""


@dataclass(frozen=True)
class DueReceipt:
    """A receipt the ledger has recorded and whose file must (still) be written."""

    transfer: TransferData
    receipt: ReceiptData


@dataclass(frozen=True)
class Claimed:
    """A leased transfer, and the organs and routes as they were when it was claimed."""

    transfer: TransferData
    directory: DirectorySnapshot


@dataclass(frozen=True)
class Moved:
    """A recorded transition: the transfer as it is now, and the receipt the step owes (if any)."""

    transfer: TransferData
    receipt: ReceiptData | None

    @property
    def due(self) -> DueReceipt | None:
        return DueReceipt(self.transfer, self.receipt) if self.receipt is not None else None


class _PostgresWriters:
    """PostgreSQL's side of :class:`SqliteWriter`: writers need no turn of their own (the server locks rows), and
    a durable commit has waited for its log when it returns."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None

    def sync_log(self) -> None:
        return None


# Columns that later versions added to tables an earlier one created (the twenty-fourth session's two).
_ADDED_COLUMNS = (("organ", "upload_quota_bytes", "BIGINT"), ("transfer", "encrypted_to", "VARCHAR(64)"))


class Ledger(OrganDirectory, AuditTrail, TransferQueries):
    """Transactional access to the ledger tables."""

    def __init__(self, url: str, actor: str | None = None) -> None:
        """Open the ledger at ``url`` (creating its tables); GatewayFault ``LEDGER_UNAVAILABLE`` says why not.
        ``actor``: the admin account this process acts for, named on the events it appends (AuditTrail.actor)."""
        self.url, self.actor = url, actor
        self.is_sqlite = url.startswith("sqlite")
        self._writer: SqliteWriter | _PostgresWriters = SqliteWriter(url) if self.is_sqlite else _PostgresWriters()
        try:
            if self.is_sqlite:
                self.engine = sqlite_engine(url)
            else:
                self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
            SQLModel.metadata.create_all(self.engine)
            self._upgrade()
        except (SQLAlchemyError, ImportError) as exc:  # a wrong URL, a database down or missing, no such data dir
            raise ledger_unavailable(exc, url) from exc
        self._writer.sync_log()

    def _upgrade(self) -> None:
        """Bring a ledger made by an earlier version up to date: columns and indexes that tables created then lack."""
        with self.engine.begin() as conn:
            unless_there = "" if self.is_sqlite else "IF NOT EXISTS "  # two nodes may upgrade at the same moment
            for table, column, kind in _ADDED_COLUMNS:
                if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {unless_there}{column} {kind}"))
            conn.execute(text("DROP INDEX IF EXISTS ix_transfer_work"))  # replaced by ix_transfer_claim
            conn.execute(text("DROP INDEX IF EXISTS ix_transfer_sender_msg"))  # by ix_transfer_message
            for table in (Transfer.__table__, Receipt.__table__):  # type: ignore[attr-defined]
                for index in table.indexes:
                    index.create(conn, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any error.

        On SQLite writers (threads and processes) queue on a lock here instead of in SQLite's busy handler,
        which sleeps in steps of up to 100 ms and left the workers idle while the database was free; the commit
        is on disk when this returns (the log is synced after the lock is let go).
        """
        with self._writer, Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session
        self._writer.sync_log()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite a plain BEGIN: readers never wait for the writer in WAL mode)."""
        with reading(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def core_tx(self, *, durable: bool = True) -> Iterator[Connection]:
        """:meth:`tx` on a bare connection, for the workers' hot path (an ORM session costs ~30 us more).

        ``durable=False``: the commit returns without waiting for the disk (on SQLite its log is not synced
        after it, PostgreSQL runs it with ``synchronous_commit`` off). Both logs are written in commit order and
        every durable commit syncs all before it, so a power cut can lose such a commit only with every commit
        after it, and a crash of the process loses nothing. Only for commits whose loss costs nothing (a lease).
        """
        with self._writer, self.engine.connect() as conn, conn.begin():
            if not durable and not self.is_sqlite:  # PostgreSQL's setting is per transaction
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn
        if durable:
            self._writer.sync_log()

    @contextmanager
    def core_read(self) -> Iterator[Connection]:
        """:meth:`read` on a bare connection."""
        with reading(), self.engine.begin() as conn:
            yield conn

    # -- transfers ------------------------------------------------------------------------------------

    def receive(self, transfers: Sequence[TransferData]) -> int:
        """Record files an intake committed to the spool (one transaction); returns how many were new.

        A transfer recorded already (a redo after a crash) is skipped.
        """
        with self.core_tx() as conn:
            known = _known_ids(conn, [t.id for t in transfers])
            fresh = [t for t in transfers if t.id not in known]
            if fresh:
                conn.execute(sql.INSERT_TRANSFER, [t.model_dump() for t in fresh])
            events = [
                new_event(t.created_at, "transition:received", t.file_name, organ_id=t.sender_id, transfer_id=t.id)
                for t in fresh
            ]
            self._chain(conn, events)
        return len(fresh)

    def known_transfer_ids(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` the ledger has a transfer for."""
        with self.core_read() as conn:
            return _known_ids(conn, ids)

    def owed_already(self, ids: Sequence[str], code: int) -> set[str]:
        """Those of the transfers ``ids`` that are owed a receipt ``code`` already (written or not)."""
        with self.core_read() as conn:
            return _known_ids(conn, ids, sql.OWED_WITH_CODE, code=code)

    def transfer(self, transfer_id: str) -> Transfer | None:
        with self.read() as s:
            return s.get(Transfer, transfer_id)

    def claim(
        self, owner: str, now: datetime, lease: timedelta, written: Sequence[tuple[str, int]] = ()
    ) -> Claimed | None:
        """Lease the oldest workable transfer to ``owner``; None when there is nothing to do.

        One ``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING``: on PostgreSQL the inner select skips rows
        another node has locked; on SQLite the transaction already holds the write lock. ``written`` marks
        receipts (transfer id, status code) whose files the worker wrote since its last claim, in the same
        transaction. The directory comes from this process's snapshot, reloaded in the same transaction
        when an admin change (here or on another node) has moved its version. The commit does not wait for the
        disk: a claim a power cut takes back is only made again, and a mark it takes back writes the same receipt
        files again.
        """
        with self.core_tx(durable=False) as conn:
            _mark_written(conn, written)
            row = direct.first(conn, sql.CLAIM, {"now": now, "until": now + lease, "owner": owner})
            if row is None:
                return None
            return Claimed(TransferData.model_validate(row), self._current_directory(conn))

    def release(self, transfer_id: str, *, error: str | None = None, retry_at: datetime | None = None) -> None:
        """End a lease; with ``error``, count a failed attempt and wait until ``retry_at``."""
        with self.tx() as s:
            transfer = s.get(Transfer, transfer_id)
            if transfer is None:
                return
            transfer.lease_until = transfer.lease_owner = None
            if error is not None:
                transfer.attempts += 1
                transfer.last_error = error
                self._append(
                    s,
                    utc(retry_at or datetime.now(UTC)),
                    "fault",
                    error,
                    organ_id=transfer.sender_id,
                    transfer_id=transfer_id,
                    ok=False,
                )
            if retry_at is not None:
                transfer.next_attempt_at = retry_at
            s.add(transfer)

    def release_leases(self, owner: str) -> int:
        """Free the leases a previous run of this node held (it was killed); returns how many."""
        with self.tx() as s:
            result = s.exec(  # type: ignore[call-overload]
                update(Transfer).where(Transfer.lease_owner == owner).values(lease_until=None, lease_owner=None)
            )
            return result.rowcount or 0

    def transition(
        self,
        transfer_id: str,
        source: State,
        target: State,
        now: datetime,
        *,
        problems: Sequence[Problem] = (),
        info: str = "",
        release: bool = False,
        via: Sequence[State] = (),
        **values: Any,
    ) -> Moved:
        """Move a transfer along the lifecycle table, recording the event and any receipt it owes.

        ``via`` names states passed on the way (steps that changed nothing outside the ledger, recorded with
        the one after them): each hop is checked against the table and gets its own event in one transaction.
        Raises StaleTransition when the transfer is not in ``source`` any more, IllegalTransition when a
        pair is not in the table. Entering VALIDATED reserves the message id; a repeat turns the step into
        a rejection with code 201; a transfer rejected after VALIDATED holds none (the sender may send again). With
        ``release`` the worker's lease ends in the same transaction.
        """
        path = [source, *via, target]
        hops = list(itertools.pairwise(path))
        codes = [lifecycle.check(a, b) for a, b in hops]
        if any(c is not None for c in codes[:-1]):
            raise ValueError(f"a step passed via {via} owes a receipt: record it on its own")
        code = codes[-1]
        if target is State.REJECTED and problems:
            code = status_for(problems)
        try:
            return self._transition(transfer_id, hops, now, code, problems, info, values, release)
        except _DuplicateMessageId:
            dup = Problem(
                "DUPLICATE_MESSAGE_ID", "/envelope/message_id", "this message_id was already accepted from this sender"
            )
            values = {k: v for k, v in values.items() if k != "form"}
            return self._transition(
                transfer_id, [(source, State.REJECTED)], now, 201, [dup], "duplicate message_id", values, True
            )

    def _transition(
        self,
        transfer_id: str,
        hops: list[tuple[State, State]],
        now: datetime,
        code: int | None,
        problems: Sequence[Problem],
        info: str,
        values: dict[str, Any],
        release: bool,
    ) -> Moved:
        source, target = hops[0][0], hops[-1][1]
        changes = {**values, "state": target.value, "updated_at": now}
        if release:
            changes.update(lease_until=None, lease_owner=None)
        if code is not None:
            changes["status_code"] = code
        with self.core_tx() as conn:
            row = direct.first(conn, sql.MOVE_TRANSFER, {"tid": transfer_id, "source": source.value, **changes})
            if row is None:
                raise StaleTransition(f"{transfer_id} is not {source.value}")
            reservation = {"sender_id": row["sender_id"], "message_id": row["message_id"], "transfer_id": transfer_id}
            if (State.RECEIVED, State.VALIDATED) in hops and target is not State.REJECTED and row["message_id"]:
                if direct.first(conn, sql.RESERVE_MESSAGE_ID[conn.dialect.name], reservation) is None:
                    raise _DuplicateMessageId  # rolls the step back; transition() records a 201 instead
            elif target is State.REJECTED and source is not State.RECEIVED and row["message_id"]:
                direct.execute(conn, sql.RELEASE_MESSAGE_ID, reservation)
            receipt = (
                _owe_receipt(conn, transfer_id, code, info or target.value, now, problems) if code is not None else None
            )
            detail = info or (f"status {code}" if code else "")
            events = [
                new_event(
                    now,
                    f"transition:{hop_target.value}",
                    detail if hop_target is target else "",
                    organ_id=row["sender_id"],
                    transfer_id=transfer_id,
                    ok=hop_target is not State.REJECTED,
                )
                for _, hop_target in hops
            ]
            self._chain(conn, events)
        return Moved(TransferData.model_validate(row), receipt)

    def add_receipt(self, transfer_id: str, code: int, info: str, now: datetime) -> bool:
        """Owe a receipt that is no transition (701: will expire soon); False if it is owed already."""
        with self.tx() as s:
            if _owe_receipt(s.connection(), transfer_id, code, info, now) is None:
                return False
            transfer = s.get(Transfer, transfer_id)
            self._append(
                s,
                now,
                f"receipt:{code}",
                info,
                organ_id=transfer.sender_id if transfer else None,
                transfer_id=transfer_id,
            )
        return True

    def purge_transfers(self, before: datetime, now: datetime) -> int:
        """Delete finished transfers (and their receipts) last changed before ``before``; message ids stay."""
        finished = [st.value for st in lifecycle.TERMINAL]
        with self.tx() as s:
            ids = list(s.exec(select(Transfer.id).where(Transfer.state.in_(finished), Transfer.updated_at < before)))
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                s.exec(delete(Receipt).where(Receipt.transfer_id.in_(part)))  # type: ignore[call-overload]
                s.exec(delete(Transfer).where(Transfer.id.in_(part)))  # type: ignore[call-overload]
            if ids:
                self._append(s, now, "purge", f"{len(ids)} transfers before {before.isoformat()}")
        return len(ids)

    def due_receipts(self, transfer_id: str | None = None) -> list[DueReceipt]:
        """Receipts recorded but not yet written to the sender's folder (all, or one transfer's)."""
        with self.read() as s:
            rows = s.exec(sql.DUE) if transfer_id is None else s.exec(sql.DUE_FOR, params={"tid": transfer_id})
            return [DueReceipt(t, r) for t, r in rows]

    def mark_written(self, written: Sequence[tuple[str, int]]) -> None:
        """Mark receipts (transfer id, status code) whose files are written."""
        if written:
            with self.core_tx() as conn:
                _mark_written(conn, written)


def _owe_receipt(
    conn: Connection, transfer_id: str, code: int, info: str, now: datetime, problems: Sequence[Problem] = ()
) -> ReceiptData | None:
    """Record the receipt ``code`` as due for the transfer unless it is already; the receipt if recorded now."""
    errors = json.dumps([p.as_dict() for p in problems], ensure_ascii=False)
    receipt = {"transfer_id": transfer_id, "status_code": code, "status_info": info, "errors": errors}
    receipt |= {"event_time": now, "written": False}
    if direct.first(conn, sql.OWE_RECEIPT[conn.dialect.name], receipt) is None:
        return None
    return ReceiptData.model_validate(receipt)


def _mark_written(conn: Connection, written: Sequence[tuple[str, int]]) -> None:
    if written:
        direct.execute(conn, sql.RECEIPT_WRITTEN, [{"tid": tid, "code": code} for tid, code in written])


def _known_ids(conn: Connection, ids: Sequence[str], statement: Any = sql.KNOWN_IDS, **params: object) -> set[str]:
    """Those of ``ids`` that ``statement`` (by default: those that name a transfer) returns, asked in chunks:
    databases bound the parameters of a query."""
    known: set[str] = set()
    for i in range(0, len(ids), 500):
        known.update(conn.execute(statement, {**params, "ids": list(ids[i : i + 500])}).scalars())
    return known


def ledger_unavailable(exc: Exception, url: str | None = None) -> GatewayFault:
    """The admin's words for a ledger that cannot be opened at ``url`` (shown without its password), or that
    failed under a command (no ``url``): why, and what to check."""
    why = " ".join(str(exc.orig if isinstance(exc, DBAPIError) else exc).split())
    if url is not None and url.startswith("sqlite") and "unable to open" in why:
        hint = "does the data dir exist? `flam-gateway init` creates it"
    elif isinstance(exc, DBAPIError):
        hint = "is the database running, does it exist, and is there room on its disk?"
    else:
        hint = "the ledger is SQLite (sqlite:///PATH) or PostgreSQL (postgresql+psycopg://USER@HOST/DATABASE)"
    what = f"cannot open the ledger at {without_password(url)}" if url else "the ledger failed during the command"
    return GatewayFault(f"{what}: {why} ({hint})", code="LEDGER_UNAVAILABLE")
