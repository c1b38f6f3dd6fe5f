"""The workers' hot statements, run on the database driver's own cursor.

SQLAlchemy compiles each statement once per database and set of parameter names; its execution machinery (the
execution context, parameter and result processing) is skipped: per statement it cost several times what
SQLite takes to run it. The transaction is still SQLAlchemy's: these run inside the one its ``Connection``
began. Only datetimes need converting on the way in (to the text SQLAlchemy stores on SQLite); rows come back
as the driver gives them, and the ledger's pydantic models turn SQLite's text into datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement

Params = Mapping[str, Any]
_NO_PARAMS: Params = MappingProxyType({})


@dataclass(frozen=True)
class _Prepared:
    """A statement compiled for one database and set of parameter names."""

    sql: str
    order: tuple[str, ...] | None  # parameter names in placeholder order (SQLite's ``?``); None: by name
    fixed: dict[str, Any]  # parameters whose value the statement holds (LIMIT 1, …)


_prepared: dict[tuple[ClauseElement, str, frozenset[str], bool], _Prepared] = {}


def execute(conn: Connection, statement: ClauseElement, params: Params | Sequence[Params] = _NO_PARAMS) -> None:
    """Run ``statement`` with ``params`` (one mapping, or a list: one row each) in ``conn``'s transaction."""
    _run(conn, statement, params).close()


def first(conn: Connection, statement: ClauseElement, params: Params = _NO_PARAMS) -> dict[str, Any] | None:
    """The first row ``statement`` returns, by column name; None when it returns none."""
    row, description = _first_row(conn, statement, params)
    return None if row is None else dict(zip([c[0] for c in description], row, strict=True))


def scalar(conn: Connection, statement: ClauseElement, params: Params = _NO_PARAMS) -> Any:
    """The first column of the first row ``statement`` returns; None when it returns none."""
    row, _ = _first_row(conn, statement, params)
    return None if row is None else row[0]


def _first_row(conn: Connection, statement: ClauseElement, params: Params) -> tuple[Sequence[Any] | None, Any]:
    """The driver's first row (or None) and the cursor's column description."""
    cursor = _run(conn, statement, params)
    try:
        return cursor.fetchone(), cursor.description
    finally:
        cursor.close()


def _run(conn: Connection, statement: ClauseElement, params: Params | Sequence[Params]) -> Any:
    many = not isinstance(params, Mapping)
    rows: Sequence[Params] = params if many else [params]  # type: ignore[assignment,list-item]
    prepared = _prepare(conn, statement, rows[0] if rows else {}, many)
    sqlite = conn.dialect.name == "sqlite"
    bound = [_bind(prepared, row, sqlite) for row in rows]
    cursor = conn.connection.cursor()
    if many:
        cursor.executemany(prepared.sql, bound)
    else:
        cursor.execute(prepared.sql, bound[0])
    return cursor


def _prepare(conn: Connection, statement: ClauseElement, params: Params, many: bool) -> _Prepared:
    key = (statement, conn.dialect.name, frozenset(params), many)
    prepared = _prepared.get(key)
    if prepared is None:
        compiled: Any = statement.compile(dialect=conn.dialect, column_keys=list(params), for_executemany=many)
        defaults = [*compiled.insert_prefetch, *compiled.update_prefetch]
        if defaults:  # computed by the execution machinery skipped here: a caller must give every column
            raise ValueError(f"no value for {[c.name for c in defaults]} in {statement}")
        fixed = {name: b.value for name, b in compiled.binds.items() if not b.required}
        order = tuple(compiled.positiontup) if compiled.positional else None
        prepared = _prepared[key] = _Prepared(compiled.string, order, fixed)
    return prepared


def _bind(prepared: _Prepared, params: Params, sqlite: bool) -> Any:
    values = {**prepared.fixed, **params}
    if sqlite:
        values = {k: _sqlite_text(v) if isinstance(v, datetime) else v for k, v in values.items()}
    return values if prepared.order is None else tuple(values[name] for name in prepared.order)


def _sqlite_text(moment: datetime) -> str:
    """A datetime as SQLAlchemy stores it on SQLite (its fields as given, without a zone)."""
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")
