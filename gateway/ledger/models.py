"""The ledger's tables: organs, their keys, routes, transfers, message ids, receipts and the event chain."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Text, TextClause, text
from sqlmodel import Field, SQLModel

from gateway.lifecycle import WORKABLE, State

ORGAN_KINDS = ("control_body", "joint_committee", "tripartite_commission", "canton", "federal")


def states_in(states: Iterable[State]) -> TextClause:
    """``transfer.state IN (…)`` with literal values, sorted: a partial index is used only for a query whose WHERE
    repeats its predicate, and literals (not parameters) let the planner see that it does."""
    return text("transfer.state IN ({})".format(", ".join(f"'{state.value}'" for state in sorted(states))))


# Transfers waiting for a worker: the predicate of PostgreSQL's claim index, which the claim repeats.
WAITING = states_in(WORKABLE)


def utc(moment: datetime) -> datetime:
    """A database timestamp as an aware UTC datetime (SQLite hands them back naive)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ts(**kwargs: object) -> object:
    return Field(sa_type=DateTime(timezone=True), **kwargs)  # type: ignore[arg-type]


class OrganData(SQLModel):
    """An execution body with its own folders; the SSH user name is its id.

    The ``…Data`` classes hold a table's columns as plain data: the ledger's hot path hands these out, as they
    are built about ten times faster than the table classes below (which track changes for the ORM).
    """

    id: str = Field(primary_key=True, max_length=63)
    kind: str = Field(max_length=32)
    name: str = Field(max_length=200)
    active: bool = True
    pgp_fingerprint: str | None = Field(default=None, max_length=64)
    armor: bool = False  # deliveries as ASCII-armoured .asc instead of binary .pgp
    created_at: datetime = _ts()
    # what it may have waiting at the gateway, if not the setting upload_quota_bytes (0: no quota; gateway.sftp.quota)
    upload_quota_bytes: int | None = Field(default=None, sa_type=BigInteger)  # type: ignore[call-overload]

    def upload_quota(self, setting: int) -> int:
        """The bytes this organ may have waiting at the gateway (0: no bound), given the gateway's setting."""
        return setting if self.upload_quota_bytes is None else self.upload_quota_bytes


class Organ(OrganData, table=True):
    """An organ as a table row."""


class DirectoryVersion(SQLModel, table=True):
    """One row counting changes to organs and routes: workers reload their directory when it moves."""

    id: int = Field(default=1, primary_key=True)
    version: int = 0


class SshKey(SQLModel, table=True):
    """One OpenSSH public key an organ may log in with (several per organ)."""

    organ_id: str = Field(primary_key=True, foreign_key="organ.id", max_length=63)
    fingerprint: str = Field(primary_key=True, max_length=100)
    key_line: str = Field(sa_column=Column(Text, nullable=False))
    added_at: datetime = _ts()


class Route(SQLModel, table=True):
    """A permitted direction: ``sender_id`` may send to ``recipient_id`` (the reply is its own route)."""

    sender_id: str = Field(primary_key=True, foreign_key="organ.id", max_length=63)
    recipient_id: str = Field(primary_key=True, foreign_key="organ.id", max_length=63)
    created_at: datetime = _ts()


class TransferData(SQLModel):
    """One file that entered an outbox, from intake to its end (see gateway.lifecycle)."""

    id: str = Field(primary_key=True, max_length=32)  # time-ordered hex id, also the spool name
    sender_id: str = Field(index=True, max_length=63)  # the account that wrote the file, never the file's claim
    file_name: str = Field(sa_column=Column(Text, nullable=False))
    size: int = 0
    sha256: str = Field(default="", max_length=64)
    state: str = Field(max_length=16)
    status_code: int | None = None  # the last receipt code
    message_id: str | None = Field(default=None, max_length=36)
    dossier_id: str | None = Field(default=None, max_length=64)
    message_type: str | None = Field(default=None, max_length=32)
    recipient_id: str | None = Field(default=None, index=True, max_length=63)
    test: bool = False
    form: str | None = Field(default=None, max_length=8)  # json | zip
    delivered_name: str | None = Field(default=None, max_length=200)
    encrypted_to: str | None = Field(default=None, max_length=64)  # the fingerprint of the recipient key it was for
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    next_attempt_at: datetime = _ts()
    lease_until: datetime | None = _ts(default=None)
    lease_owner: str | None = Field(default=None, max_length=64)

    @classmethod
    def arrival(
        cls, transfer_id: str, sender_id: str, file_name: str, now: datetime, *, size: int = 0, sha256: str = ""
    ) -> TransferData:
        """A file just taken from ``sender_id``'s outbox, in the first state of its life, due for work now."""
        return cls(
            id=transfer_id,
            sender_id=sender_id,
            file_name=file_name,
            size=size,
            sha256=sha256,
            state=State.RECEIVED.value,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        )


class Transfer(TransferData, table=True):
    """A transfer as a table row."""

    __table_args__ = (
        # The claim's index: with ``id`` in it SQLite finds the oldest workable transfer without sorting every
        # waiting one (146 us at 1,000 waiting, 2.2 ms at 10,000 with (state, next_attempt_at); 7 and 8 us).
        Index("ix_transfer_claim", "state", "next_attempt_at", "id"),
        # PostgreSQL cannot read that index in claim order across the three waiting states, so it sorted every
        # waiting transfer on each claim (2.9 ms at 1,000 waiting, 9.3 ms at 10,000, 36 ms at 50,000). This
        # index holds only the waiting transfers, in claim order: a claim reads its first entries.
        Index("ix_transfer_waiting", "next_attempt_at", "id", postgresql_where=WAITING).ddl_if(dialect="postgresql"),
        # `transfers show MESSAGE_ID` (with the primary key for a transfer id): a year is 730,000 transfers
        Index("ix_transfer_message", "message_id"),
    )


class MessageId(SQLModel, table=True):
    """Reserves ``(sender, message_id)`` for the one accepted transfer that carries it (code 201 otherwise)."""

    sender_id: str = Field(primary_key=True, max_length=63)
    message_id: str = Field(primary_key=True, max_length=36)
    transfer_id: str = Field(max_length=32)


# The predicate of the receipts-due index, which the query for them repeats (a partial index is used only for a
# query whose WHERE holds its predicate).
UNWRITTEN = text("written = false")


class ReceiptData(SQLModel):
    """A receipt due to the sender; ``written`` turns true once the file is in its receipts folder."""

    transfer_id: str = Field(primary_key=True, foreign_key="transfer.id", max_length=32)
    status_code: int = Field(primary_key=True)
    status_info: str = Field(sa_column=Column(Text, nullable=False))
    errors: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON list of problems
    event_time: datetime = _ts()
    written: bool = False


class Receipt(ReceiptData, table=True):
    """A receipt as a table row."""

    # The receipts not yet written, in the order they are written: every maintenance round asks for them, and a
    # year keeps 1.5 million written ones (the round's query scanned them all: 90 ms on SQLite).
    __table_args__ = (Index("ix_receipt_due", "event_time", sqlite_where=UNWRITTEN, postgresql_where=UNWRITTEN),)


class Event(SQLModel, table=True):
    """Append-only audit trail; each row's ``hash`` covers its content and the previous row's hash."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)
    organ_id: str | None = Field(default=None, index=True, max_length=63)
    transfer_id: str | None = Field(default=None, index=True, max_length=32)
    action: str = Field(max_length=32)  # transition:<state>, login, login_failed, upload, ...
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
    ok: bool = True
    peer: str | None = Field(default=None, max_length=80)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
