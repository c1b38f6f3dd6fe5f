"""SQLite made to behave like a one-writer database for several threads and processes.

SQLite ignores ``FOR UPDATE SKIP LOCKED``, so every write transaction starts with ``BEGIN IMMEDIATE`` (no
double claims, no lock-upgrade deadlocks), and writers queue on a lock of their own instead of in SQLite's
busy handler, which sleeps in steps of up to 100 ms and left workers idle while the database was free.
Readers start a plain ``BEGIN`` and never wait for the writer (WAL mode). A commit does not sync the log
itself: the ledger calls :meth:`SqliteWriter.sync_log` after each commit that must be durable, once the writer
lock is let go, so that no writer waits for another's disk.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlmodel import create_engine

from gateway.folders import fsync_file

_reading = threading.local()
_CACHE_LIMIT = 4 << 20  # bytes of SQLite memory per process (soft: a statement that needs more still gets it)


def sqlite_engine(url: str) -> Engine:
    """An engine whose connections run in WAL mode and whose write transactions begin IMMEDIATE."""
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})
    event.listen(engine, "connect", _connect)
    event.listen(engine, "begin", _begin)
    return engine


@contextmanager
def reading() -> Iterator[None]:
    """Mark the transactions this thread begins inside as read-only (a plain BEGIN)."""
    _reading.active = True
    try:
        yield
    finally:
        _reading.active = False


class SqliteWriter:
    """One SQLite writer at a time, across threads (a lock) and processes (flock on a file beside the db)."""

    def __init__(self, url: str) -> None:
        database = url.split(":///", 1)[1] if ":///" in url else ""
        # absolute: the same files whatever the working directory is when a process first takes the lock
        file = os.path.abspath(database) if database and database != ":memory:" else None
        self._thread_lock = threading.Lock()
        self._path = f"{file}.writer.lock" if file else None
        self._log = Path(f"{file}-wal") if file else None
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._path is None:
            return
        try:
            if self._fd is None or self._pid != os.getpid():  # a forked child opens its own description
                self._fd, self._pid = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def sync_log(self) -> None:
        """Put every commit made so far on disk: ``fdatasync`` of the write-ahead log, outside the writer lock.

        The log only grows by whole commits, in commit order, so this covers the caller's commit and any made
        since; writers syncing at the same moment share one journal commit of the filesystem. No log file: every
        commit is in the database file, synced by the checkpoint that removed the log.
        """
        if self._log is not None:
            with suppress(FileNotFoundError):
                fsync_file(self._log, data_only=True)


def _begin(conn: Any) -> None:
    # on the driver's connection: SQLAlchemy's execution machinery costs several times the statement here
    conn.connection.driver_connection.execute("BEGIN" if getattr(_reading, "active", False) else "BEGIN IMMEDIATE")


def _connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" hook issue BEGIN IMMEDIATE itself
    cur = dbapi_conn.cursor()
    wal = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    # NORMAL in WAL mode: a commit does not sync the log (the ledger syncs it after a durable commit, outside the
    # writer lock: SqliteWriter.sync_log), and a power cut cannot corrupt the database. Without that sync a power
    # cut could roll back the last commits while the files they recorded had moved on (a dossier delivered, its
    # spool wiped, the ledger back at RECEIVED). Where WAL mode is refused, FULL syncs each commit itself.
    cur.execute("PRAGMA synchronous=NORMAL" if wal else "PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    # for the whole process: each connection's page cache would fill to 2 MiB as the ledger grows, and a gateway
    # process holds several connections for months; past the limit SQLite reuses its pages instead
    cur.execute(f"PRAGMA soft_heap_limit={_CACHE_LIMIT}")
    cur.close()
