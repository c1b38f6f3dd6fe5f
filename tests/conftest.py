"""Shared fixtures: ledgers on SQLite and PostgreSQL, short GnuPG homes, gateways run as subprocesses."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from gateway.harness import fresh_schema
from gateway.ledger.store import Ledger

PG_URL = os.environ.get("FLAM_GATEWAY_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/test")


def _pg_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_schema(PG_URL))
        except Exception as exc:
            if "FLAM_GATEWAY_TEST_DATABASE_URL" in os.environ:
                raise
            pytest.skip(f"PostgreSQL not reachable at {PG_URL} and FLAM_GATEWAY_TEST_DATABASE_URL not set: {exc}")
        yield url


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


@pytest.fixture
def immutable() -> Callable[[Path], AbstractContextManager[None]]:
    """Make a folder immutable for a ``with`` block (``chattr +i``: nothing added to it, removed or renamed, as a
    disk fault or an admin's script would); skips where that is not allowed (it needs root)."""

    @contextlib.contextmanager
    def made(path: Path) -> Iterator[None]:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make {path} immutable here (chattr +i needs root): {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)

    return made
