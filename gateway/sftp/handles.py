"""An open file of an SFTP session (:class:`Handle`), and what becomes of an upload's descriptor on disk: written
whole, put on disk in the background as it streams in, tagged with its partial name so that a killed gateway's next
start can put it back, kept for its client to resume. Nothing here speaks SFTP but the error a closed handle gets."""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from asyncssh import SFTPFailure

from gateway.folders import PARTIAL_XATTR
from gateway.sftp.jail import Place

# A large upload is put on disk every 32 MiB while it streams in, on a thread: the fsync before the close's "ok"
# then waits for the last few MiB, not for a backlog (measured: 0.75-1.0 s for 512 MiB on a journaled ext4).
FLUSH_BYTES = 32 << 20

log = logging.getLogger(__name__)
_untaggable = False  # warned once that the outboxes' filesystem takes no user attributes


@dataclass
class Handle:
    """A file a session has open: a download, or an upload (``temp``)."""

    fd: int
    place: Place
    temp: Path | None = None  # uploads: the hidden file written until the protocol close
    count: int = 0  # bytes read, or written
    failed: bool = False  # a write failed (a full disk, an I/O error): the upload is never stored
    flushed: int = 0  # bytes written when the last background flush began
    paused: int = 0  # downloads: bytes read when the last read let the other sessions go first
    flushing: Future[None] | None = None  # that flush
    resumable: bool = False  # under a partial upload's name: kept when the connection drops, for the client to resume
    closed: bool = False  # by the client, by the end of its connection, or by the door's stop: its fd is gone


def write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``: after a short write (the disk filling up) the next one raises."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def tag_partial(fd: int, name: str) -> None:
    """Tag an upload's hidden file with its partial name, which the next start puts it back under if the gateway is
    killed with it open (gateway.folders.keep_partial_uploads); a filesystem without user attributes: not."""
    global _untaggable
    try:
        os.setxattr(fd, PARTIAL_XATTR, name.encode())
    except OSError as exc:
        if not _untaggable:
            _untaggable = True
            log.warning("partial uploads cannot be tagged here (%s): one open when the gateway is killed is lost", exc)


def mark_failed(handle: Handle) -> None:
    """Mark an upload as never to be stored, nor kept to resume: not even by the next start, should the gateway be
    killed before its close (its hidden file loses the tag gateway.folders.keep_partial_uploads looks for)."""
    handle.failed = True
    if handle.resumable:
        with contextlib.suppress(OSError):
            os.removexattr(handle.fd, PARTIAL_XATTR)


def check_open(handle: Handle) -> None:
    """Refuse a request on an upload the door has ended (its descriptor's number may belong to another file now)."""
    if handle.closed:
        raise SFTPFailure(f"{handle.place.virtual} is closed")


def sync_kept(fd: int, path: Path) -> None:
    """On a flush thread: put a kept partial upload (open as ``fd``, a duplicate) on disk, or remove it from ``path``
    if the disk lost some of it (a resume would build on that)."""
    try:
        os.fdatasync(fd)
    except OSError as exc:
        log.warning("the partial upload %s is removed: writing it to disk failed (%s)", path, exc)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not resumed (renamed away) meanwhile
                os.unlink(path)
    finally:
        os.close(fd)


def sync_and_close(fd: int) -> None:
    """On a flush thread: put what was written through ``fd`` (a duplicate of an upload's) on disk, then close it."""
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def raise_flush_error(handle: Handle) -> None:
    """Wait for the upload's background flush; raise the write error it met.

    The flush's duplicate shares the upload's open file, and the kernel reports a write error once per open
    file: if the flush got it, the closing fsync would not, and the client would hear "ok".
    """
    if handle.flushing is not None:
        handle.flushing.result()
