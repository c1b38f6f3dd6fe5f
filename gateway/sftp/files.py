"""The file operations of one SFTP session, inside its organ's jail (gateway.sftp.jail): listings, downloads,
removals, and uploads. An upload is written to a hidden ``.sftp-*.upload`` file and renamed to its name, durably,
only when the client closes it in the protocol; a write that failed discards it, and so does a dropped connection,
but for an upload under a partial upload's name (``x.zip.filepart``: the gateway never collects it), which is kept
under that name for the client to resume (unless a newer upload to the name has begun since): a client that opens
it again without truncating it writes on where it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
from asyncssh import (
    SFTPAttrs,
    SFTPFailure,
    SFTPName,
    SFTPNoSuchFile,
    SFTPPermissionDenied,
    SFTPQuotaExceeded,
    SFTPVFSAttrs,
)

from gateway.folders import UPLOAD_PREFIX, is_partial_name, rename_durably, rename_no_replace
from gateway.sftp.handles import (
    FLUSH_BYTES,
    Handle,
    check_open,
    mark_failed,
    raise_flush_error,
    sync_and_close,
    sync_kept,
    tag_partial,
    write_all,
)
from gateway.sftp.jail import AREAS, Jail, Place

if TYPE_CHECKING:
    from gateway.sftp.server import DoorState

RECENT_SECONDS = 300.0  # how long stat/setstat still answer for an upload (or a rename) the gateway took away
# ... for this many of a session's last uploads: each costs ~0.8 KB, and a night's session of 20,000 uploads
# kept them all (the door grew by 19 MiB, past 100 MB of RSS)
RECENT_UPLOADS = 256
_WRITE_FLAGS = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC | asyncssh.FXF_APPEND
# A download: at most this much a read (OpenSSH's sftp-server answers 255 KiB; not less than asyncssh's copy-data
# block, which takes a short read for the end of the file), and no read while this much of what the client asked
# for before is still unsent. asyncssh sends each answer at once and reads the next request: a client that asks
# without taking the answers (120 reads of 16 MiB) grew the door by 2 GB.
MAX_READ = 256 << 10
MAX_UNSENT = 4 << 20
_YIELD_BYTES = 32 << 20  # a download lets the other sessions go this often (copy-data's loop has no pause of its own)
# An upload may leave no hole larger than this between what it has written and where it writes (a client that
# writes in parallel leaves small ones for a moment): one write at 16 GiB made a sparse file that took the
# intake a minute to hash, for every organ.
MAX_HOLE = 64 << 20


class SftpSession(asyncssh.SFTPServer):
    """The file operations of one SFTP session, inside the organ's jail."""

    def __init__(self, chan: asyncssh.SSHServerChannel, door: DoorState) -> None:
        super().__init__(chan)
        self.door = door
        self.organ = chan.get_extra_info("username")
        self.peer = "{}:{}".format(*(chan.get_extra_info("peername") or ("?", 0)))
        self.jail = Jail(door.organs_root / self.organ)
        self.recent: OrderedDict[str, tuple[float, os.stat_result]] = OrderedDict()  # oldest first
        self.conn = chan.get_connection()  # asyncssh's `connection`, looked up once: every read and write asks

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _touch(self) -> None:
        """The session is busy: the door's idle round leaves it (reads and writes too: a 4 GiB package takes long)."""
        if self.conn in self.door.connections:  # not once the connection has gone (nothing would take it out)
            self.door.connections[self.conn] = time.monotonic()

    def _audit(self, action: str, detail: str, ok: bool = True) -> None:
        self.door.hooks.audit(self.organ, action, detail, ok, self.peer)

    def _refuse(self, action: str, error: Exception) -> Exception:
        self._audit("refused", f"{action}: {error}", False)
        return error

    def _remember(self, place: Place, info: os.stat_result) -> None:
        now = time.monotonic()
        self.recent[place.virtual] = (now, info)
        self.recent.move_to_end(place.virtual)
        while len(self.recent) > RECENT_UPLOADS or next(iter(self.recent.values()))[0] < now - RECENT_SECONDS:
            self.recent.popitem(last=False)

    def _recent(self, place: Place) -> os.stat_result | None:
        entry = self.recent.get(place.virtual)
        return entry[1] if entry and time.monotonic() - entry[0] < RECENT_SECONDS else None

    def map_path(self, path: bytes) -> bytes:
        raise SFTPPermissionDenied("not supported")

    # -- paths and listings ------------------------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        return self.jail.place(path).virtual.encode()

    def _attrs(self, path: bytes, follow: bool) -> os.stat_result:
        self._touch()
        place = self.jail.place(path)
        if not place.name:
            return place.real.stat()
        try:
            return self.jail.regular(place)
        except SFTPNoSuchFile:
            if (info := self._recent(place)) is not None:
                return info
            raise

    def stat(self, path: bytes) -> os.stat_result:
        return self._attrs(path, True)

    def lstat(self, path: bytes) -> os.stat_result:
        return self._attrs(path, False)

    def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        """A listing, counted among the organ's open files from its OPENDIR to its CLOSE (or the session's end)."""
        self._touch()
        place = self.jail.place(path)
        if place.name:
            raise SFTPFailure("not a folder")
        self._may_open()
        listing = self._listing(place)
        self._opened()
        weakref.finalize(listing, self._ended)  # asyncssh drops it at CLOSE, read to its end or not
        return listing

    async def _listing(self, place: Place) -> AsyncIterator[SFTPName]:
        if not place.area:
            entries = [(area.encode(), (place.real / area).stat()) for area in AREAS]
        else:
            entries = []
            with os.scandir(place.real) as it:
                for entry in it:
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            entries.append((os.fsencode(entry.name), entry.stat(follow_symlinks=False)))
        self._audit("list", place.virtual)
        for name in (b".", b".."):
            yield SFTPName(name, attrs=SFTPAttrs.from_local(place.real.stat()))
        for name, info in entries:
            yield SFTPName(name, attrs=SFTPAttrs.from_local(info))

    # -- files -------------------------------------------------------------------------------------------------

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Handle | Awaitable[Handle]:
        self._touch()
        self._may_open()
        if pflags & _WRITE_FLAGS:
            place, exists = self._upload_place(path, pflags)
            resume = exists and not pflags & asyncssh.FXF_TRUNC
            if self.door.quota.over(self.organ, 1) is not None:
                return self._upload_after_reading(place, exists, resume)
            return self._upload(place, exists, resume)
        place = self.jail.file(path)
        self.jail.regular(place)
        try:
            fd = os.open(place.real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise SFTPNoSuchFile("no such file") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SFTPNoSuchFile("no such file")
        self._opened()
        return Handle(fd, place)

    def _may_open(self) -> None:
        """Refuse to open more than the organ may have open at once (files and listings, all its sessions): one
        session opened 19,940 files, and the door then had no descriptor left for the next login."""
        if self.door.open_files.get(self.organ, 0) >= self.door.limits.max_open_per_organ:
            held = f"{self.door.limits.max_open_per_organ} files and listings open in its sessions, the most at once"
            raise self._refuse("open", SFTPFailure(f"{self.organ} has {held}"))

    def _opened(self) -> None:
        self.door.open_files[self.organ] = self.door.open_files.get(self.organ, 0) + 1

    def _ended(self) -> None:
        self.door.open_files[self.organ] -= 1

    def _upload_place(self, path: bytes, pflags: int) -> tuple[Place, bool]:
        """Where an upload to ``path`` goes, and whether a partial upload is there under that name (which the upload
        resumes, or replaces if it truncates: any other file there refuses it)."""
        try:
            place = self.jail.file(path, areas=("outbox",))
        except SFTPPermissionDenied as exc:
            raise self._refuse("write", exc) from None
        if not os.path.lexists(place.real):  # any entry, a dangling link too
            return place, False
        if is_partial_name(place.name) and not pflags & asyncssh.FXF_EXCL and stat.S_ISREG(place.real.lstat().st_mode):
            return place, True
        raise self._refuse("write", SFTPFailure(f"{place.virtual} exists already; uploads never overwrite"))

    async def _upload_after_reading(self, place: Place, exists: bool, resume: bool) -> Handle:
        await self._quota_after_reading(1, 0, place.virtual)
        return self._upload(place, exists, resume)

    def _upload(self, place: Place, exists: bool, resume: bool) -> Handle:
        """Open an upload to ``place``: a new one, or on from where the partial one under its name ended
        (``resume``); one that truncates a partial upload (``exists``) replaces it."""
        temp = place.real.parent / f"{UPLOAD_PREFIX}{secrets.token_hex(8)}.upload"
        handle = self._resume(place, temp) if resume else None
        if exists and not resume:
            with contextlib.suppress(FileNotFoundError):
                place.real.unlink()
                self._audit("remove", f"{place.virtual}: a new upload under its name replaces it")
        if handle is None:
            handle = Handle(self.door.spares.take(temp), place, temp, resumable=is_partial_name(place.name))
        if handle.resumable:  # the newest upload to the name: an older one (its connection not seen gone) is not kept
            self.door.partials[place.real] = (self, handle)
            tag_partial(handle.fd, place.name)
        self._opened()
        return handle

    def _resume(self, place: Place, temp: Path) -> Handle | None:
        """Take the partial upload at ``place`` over (as the hidden ``temp``) to write on where it ended; None if it
        has gone meanwhile."""
        try:
            fd = os.open(place.real, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._refuse(
                "write", SFTPPermissionDenied(f"{place.virtual} cannot be resumed: {exc.strerror}")
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._refuse("write", SFTPPermissionDenied(f"{place.virtual} is not a file"))
            rename_no_replace(place.real, temp)  # the session's own from now on
        except FileNotFoundError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        self.door.quota.wrote(self.organ, info.st_size)  # counted with the uploads under way, out of the outbox
        self._audit("upload_resumed", f"{place.virtual} at {info.st_size} bytes")
        return Handle(fd, place, temp, count=info.st_size, flushed=info.st_size, resumable=True)

    async def _quota_after_reading(self, size: int, written: int, what: str) -> None:
        """The last reading refuses the upload ``what`` (``size`` bytes with the write at hand, ``written`` so far):
        read again, as the organ's dossiers may have gone since, and refuse it only if the new reading does too."""
        await self.door.quota.fresh(self.organ)
        try:
            self.door.quota.check(self.organ, size, written, what)
        except SFTPQuotaExceeded as exc:
            raise self._refuse("write", exc) from None

    def read(self, handle: Handle, offset: int, size: int) -> bytes | Awaitable[bytes]:
        if handle.temp is not None:  # nothing to read back: the quota counted what a handle moved
            raise SFTPPermissionDenied("opened for writing")
        self._touch()
        if self._backlogged() or handle.count - handle.paused >= _YIELD_BYTES:
            handle.paused = handle.count
            return self._read_later(handle, offset, size)
        return self._read(handle, offset, size)

    def _backlogged(self) -> bool:
        """Whether the door holds too much of the session's answers unsent: over MAX_UNSENT in its channel and in its
        connection's buffer, which asyncssh fills as far as the client's window lets it (a client that asks for a
        window of GiBs and reads nothing moves the answers there) and never waits for; or a new key exchange is under
        way, during which asyncssh holds every packet (one never ended would have the answers pile up)."""
        if not getattr(self.conn, "_kex_complete", True):  # asyncssh's, as `_transport`: tests/test_door_abuse.py
            return True
        transport = getattr(self.conn, "_transport", None)
        buffered = self.channel.get_write_buffer_size() + (transport.get_write_buffer_size() if transport else 0)
        return buffered > MAX_UNSENT

    async def _read_later(self, handle: Handle, offset: int, size: int) -> bytes:
        """Let the other sessions go first (a copy-data request reads and writes in a loop of its own, without a
        pause), then wait until the client has taken its earlier answers (the session reads no request meanwhile)."""
        await asyncio.sleep(0)
        pause = 0.001
        while self._backlogged():
            if self.channel.is_closing():
                raise SFTPFailure("the session has ended")
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.1)  # a quick wait for a client that reads on, few for one that does not
        return self._read(handle, offset, size)

    def _read(self, handle: Handle, offset: int, size: int) -> bytes:
        data = os.pread(handle.fd, min(size, MAX_READ), offset)  # a short read: the client asks for the rest
        handle.count += len(data)
        return data

    def write(self, handle: Handle, offset: int, data: bytes) -> int | Awaitable[int]:
        if handle.temp is None:
            raise SFTPPermissionDenied("opened for reading")
        check_open(handle)
        if handle.failed:  # the client's writes in flight after a refused or failed one
            raise SFTPFailure(f"{handle.place.virtual} is not stored: an earlier write to it failed")
        self._touch()
        if offset - handle.count > MAX_HOLE:  # past what it has written, as far as the bytes it has sent tell
            mark_failed(handle)
            gap = f"a write at byte {offset} would leave a gap after the {handle.count} written"
            raise self._refuse("write", SFTPFailure(f"{handle.place.virtual} is not stored: {gap}"))
        size = max(offset, handle.count) + len(data)  # the upload's bytes with this write
        if self.door.quota.over(self.organ, size, handle.count) is not None:
            return self._write_after_reading(handle, offset, data, size)
        return self._write(handle, offset, data)

    async def _write_after_reading(self, handle: Handle, offset: int, data: bytes, size: int) -> int:
        try:
            await self._quota_after_reading(size, handle.count, handle.place.virtual)
        except SFTPQuotaExceeded:
            mark_failed(handle)  # never stored: its close discards it
            raise
        return self._write(handle, offset, data)

    def _write(self, handle: Handle, offset: int, data: bytes) -> int:
        try:
            write_all(handle.fd, data, offset)
            handle.count += len(data)
            self.door.quota.wrote(self.organ, len(data))
            if handle.count - handle.flushed >= FLUSH_BYTES and (handle.flushing is None or handle.flushing.done()):
                raise_flush_error(handle)
                handle.flushed = handle.count
                handle.flushing = self.door.flusher.submit(sync_and_close, os.dup(handle.fd))
        except OSError:
            mark_failed(handle)  # the client hears this error; its close then discards the upload
            raise
        return len(data)

    def fstat(self, handle: Handle) -> os.stat_result:
        check_open(handle)
        return os.fstat(handle.fd)

    def fsetstat(self, handle: Handle, attrs: SFTPAttrs) -> None:
        check_open(handle)
        if handle.temp is not None and attrs.mtime is not None:
            os.utime(handle.fd, (attrs.atime or attrs.mtime, attrs.mtime))

    def fsync(self, handle: Handle) -> None:
        check_open(handle)
        try:
            os.fsync(handle.fd)
        except OSError:
            mark_failed(handle)  # the kernel reports a write error once: the close's own fsync would not see it
            raise

    def close(self, handle: Handle) -> None:
        # asyncssh calls close() from SFTPServerHandler._process_close for the client's FXP_CLOSE, and from
        # SFTPServerHandler._cleanup for every handle still open when the connection is gone (asyncssh
        # sftp.py, _process_close and _cleanup). Only the first is a finished upload; its caller tells which.
        self._close(handle, finished=sys._getframe(1).f_code.co_name == "_process_close")

    def abandon(self, handle: Handle) -> None:
        """End an upload still open when the door stops, as if its connection had dropped (asyncssh's clean-up of
        the session may not run before the door's event loop ends)."""
        self._close(handle, finished=False)

    def _close(self, handle: Handle, finished: bool) -> None:
        if handle.closed:
            return
        handle.closed = True
        self._ended()
        newest = self.door.partials.get(handle.place.real, (None, None))[1] is handle
        if newest:
            del self.door.partials[handle.place.real]
        stored = False
        try:
            if handle.temp is None:
                self._audit("download", f"{handle.place.virtual} {handle.count} bytes")
            elif not finished:
                stored = newest and handle.count > 0 and not handle.failed and self._keep(handle)
                if not stored:
                    self._discard(handle, "upload_aborted")
            elif handle.failed:
                self._discard(handle, "upload_failed")
                raise SFTPFailure(f"{handle.place.virtual} was not stored: a write to it failed")
            else:
                self._commit(handle)
                stored = True
        finally:
            os.close(handle.fd)
            if handle.temp is not None:
                self.door.quota.ended(self.organ, handle.count, stored)

    def _discard(self, handle: Handle, action: str) -> None:
        assert handle.temp is not None
        handle.temp.unlink(missing_ok=True)
        self._audit(action, f"{handle.place.virtual} after {handle.count} bytes", False)

    def _keep(self, handle: Handle) -> bool:
        """Keep what a dropped connection's upload has written, under its partial upload's name, for the client to
        resume; False if a background flush lost some of it, or the name has been taken meanwhile."""
        assert handle.temp is not None
        if handle.flushing is not None and handle.flushing.done() and handle.flushing.exception() is not None:
            return False  # data the kernel lost: a resume would build on it
        try:
            rename_no_replace(handle.temp, handle.place.real)
        except OSError:  # the name taken (another upload's), or the outbox gone
            return False
        self._audit("upload_interrupted", f"{handle.place.virtual} kept after {handle.count} bytes to resume", False)
        try:  # on disk in the background: nobody waits for it
            fd = os.dup(handle.fd)
        except OSError:
            return True
        try:
            self.door.flusher.submit(sync_kept, fd, handle.place.real)
        except RuntimeError:  # the door is stopping
            sync_kept(fd, handle.place.real)
        return True

    def _commit(self, handle: Handle) -> None:
        assert handle.temp is not None
        try:
            raise_flush_error(handle)
        except OSError:
            self._discard(handle, "upload_failed")
            raise
        info = os.fstat(handle.fd)
        try:
            # data and name on disk before the client hears "ok" (here: a thread hand-off costs more)
            rename_durably(handle.temp, handle.place.real, handle.fd)
        except FileExistsError:
            handle.temp.unlink(missing_ok=True)
            raise self._refuse("upload", SFTPFailure(f"{handle.place.virtual} exists already")) from None
        except OSError:
            if handle.temp.exists():  # not renamed: nothing of it may stay behind, hidden and outside the quota
                self._discard(handle, "upload_failed")
            raise
        self._remember(handle.place, info)
        self._audit("upload", f"{handle.place.virtual} {info.st_size} bytes")

    # -- changes -----------------------------------------------------------------------------------------------

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        self._touch()
        try:
            place = self.jail.file(path, areas=("outbox",))
        except SFTPPermissionDenied as exc:
            raise self._refuse("setstat", exc) from None
        try:
            self.jail.regular(place)
        except SFTPNoSuchFile:
            if self._recent(place) is None:
                raise
            return  # the gateway already took the upload: nothing left to change
        if attrs.mtime is not None:
            os.utime(place.real, (attrs.atime or attrs.mtime, attrs.mtime), follow_symlinks=False)

    def remove(self, path: bytes) -> None:
        self._touch()
        place = self.jail.file(path)
        self.jail.regular(place)
        place.real.unlink()
        self.recent.pop(place.virtual, None)
        self._audit("remove", place.virtual)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        self._touch()
        try:
            old, new = self.jail.file(oldpath, areas=("outbox",)), self.jail.file(newpath, areas=("outbox",))
        except SFTPPermissionDenied as exc:
            raise self._refuse("rename", exc) from None
        info = self.jail.regular(old)
        try:
            rename_durably(old.real, new.real)
        except FileExistsError:
            raise self._refuse("rename", SFTPFailure(f"{new.virtual} exists already")) from None
        self.recent.pop(old.virtual, None)
        self._remember(new, info)  # a client may stat or set the time after its rename: the gateway took the file
        self._audit("rename", f"{old.virtual} -> {new.virtual}")

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        self.rename(oldpath, newpath)

    def _never(self, action: str) -> None:
        raise self._refuse(action, SFTPPermissionDenied(f"{action} is not allowed"))

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        self._never("mkdir")

    def rmdir(self, path: bytes) -> None:
        self._never("rmdir")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        self._never("symlink")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        self._never("link")

    def readlink(self, path: bytes) -> bytes:
        self._never("readlink")
        return b""

    def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        self.jail.place(path)
        return self._space()

    def fstatvfs(self, handle: Handle) -> SFTPVFSAttrs:
        return self._space()

    def _space(self) -> SFTPVFSAttrs:
        """The organ's own space (`df` in OpenSSH's sftp, WinSCP's free space): its upload quota, and what is left of
        it, where it has one; the disk's free space only where that is less, or it has none. Not the disk all
        organs share: that told each organ how much the others were sending."""
        disk = SFTPVFSAttrs.from_local(os.statvfs(self.jail.root))
        limit = self.door.quota.limit(self.organ)
        if not limit:
            return disk
        left = min(max(0, limit - self.door.quota.waiting(self.organ)), disk.bavail * disk.frsize)
        size, free = limit // disk.frsize, left // disk.frsize
        return SFTPVFSAttrs(disk.bsize, disk.frsize, size, free, free, 0, 0, 0, 0, disk.flags, disk.namemax)
