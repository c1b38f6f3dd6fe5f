"""Shared fixtures: ledgers on SQLite and PostgreSQL, short GnuPG homes, gateways run as subprocesses."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.ledger.store import Ledger

PG_URL = os.environ.get("FLAM_GATEWAY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/test")


def _pg_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # survives a restart
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:
        if "FLAM_GATEWAY_TEST_DATABASE_URL" in os.environ:
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} and FLAM_GATEWAY_TEST_DATABASE_URL not set: {exc}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A ledger database URL: every ledger test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        yield from _pg_schema_url()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema (for a gateway whose ledger must be PostgreSQL)."""
    yield from _pg_schema_url()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    store = Ledger(ledger_url)
    yield store
    store.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir (GnuPG homes must be short: the gpg-agent socket path has a Unix length limit)."""
    path = Path(tempfile.mkdtemp(prefix="fg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
