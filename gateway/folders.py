"""The on-disk layout and its atomic operations.

```
<data>/organs/<organ>/outbox|inbox|receipts   what organs see (over SFTP or on the host)
<data>/spool/in/<sender>/<transfer>.<name>     a collected dossier, private, wiped when done
<data>/spool/out/<transfer>.pgp                its encryption, renamed into the recipient's inbox
<data>/spool/tmp/                              temp files, renamed into place (same filesystem)
<data>/spool/spare/                            the SFTP door's own: empty files made ahead of uploads (sftp/spares.py)
<data>/quarantine/<sender>/<transfer>.<name>   rejected originals, for the admin only
<data>/gnupg, <data>/hostkeys                  the gateway's own keys
```
Every move is a rename on one filesystem, so each is atomic; directories are fsynced after renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayFault
from gateway.health import Space

ORGAN_SUBDIRS = ("outbox", "inbox", "receipts")
TEMP_PREFIXES = (".", "~")
TEMP_SUFFIXES = (".part", ".partial", ".filepart", ".tmp")
UPLOAD_PREFIX = ".sftp-"  # SFTP uploads are written beside their name, hidden, until the client's close
PARTIAL_XATTR = "user.flam-gateway.partial"  # on a hidden SFTP upload: the partial upload's name it is written for
NAME_MAX = 255  # bytes in a file name, on ext4 and XFS
SERVE_LOCK = "serve.lock"  # in the data dir: held by the one `serve` that runs on it
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_transfer_id() -> str:
    """A 32-hex id that sorts by creation time (milliseconds) and cannot be guessed."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def is_temp_name(name: str) -> bool:
    """Names a writer is still writing (renamed when done): never picked up."""
    return name.startswith(TEMP_PREFIXES) or name.lower().endswith(TEMP_SUFFIXES)


def is_partial_name(name: str) -> bool:
    """A partial upload's name (``x.zip.filepart``, ``x.zip.part``): an SFTP upload under it that is cut off is kept
    for its client to resume, and purge removes it once nobody resumes it. Hidden and ``~`` names are not: a local
    program may keep its own files under them."""
    return not name.startswith(TEMP_PREFIXES) and name.lower().endswith(TEMP_SUFFIXES)


def text_name(name: str) -> str:
    """A file name read from the disk, as text that the ledger and receipts can hold.

    Python decodes the bytes of a name that are not UTF-8 (a Latin-1 export, say) to lone surrogates, which no
    database accepts; they become U+FFFD, which the dossier rules then reject (``parse.name_problems``).
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def safe_component(text: str, limit: int = 80) -> str:
    """``text`` reduced to characters that are safe in any file name, for receipt names."""
    return _SAFE.sub("_", text)[:limit].strip("._") or "file"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path, *, data_only: bool = False) -> None:
    """fsync ``path``; ``data_only``: fdatasync (its data and size, not its times: no journal commit for an
    overwrite in place)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def write_durably(dst: Path, data: bytes, *, tmp: Path | None = None, mode: int = 0o666) -> None:
    """Write ``data`` to ``tmp`` (default: beside ``dst``), fsync it, rename it onto ``dst`` (replacing it) and
    fsync the folder: ``dst`` is whole, old or new, whenever the power goes. ``mode`` is masked by the umask."""
    tmp = tmp or dst.with_name(f".{dst.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def sha256_of(path: Path) -> str:
    """The SHA-256 of the regular file at ``path`` (hex), read in chunks without following a link."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_tree(root: Path) -> None:
    """fsync every plain file and folder under ``root``: for the files of a tool that does not fsync them (gpg)."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():  # not the agent's sockets
                fsync_file(path)
        fsync_dir(Path(folder))


@dataclass(frozen=True)
class Filesystem:
    """The filesystem holding a path, as /proc/self/mountinfo names it."""

    type: str  # "" when the path's device is in no mount line (btrfs subvolumes, some containers)
    source: str
    options: str
    journal: bool | None  # ext2/3/4: whether /proc/fs/jbd2 has a journal for the device; None for others

    def __str__(self) -> str:
        journal = {True: " with a journal", False: " without a journal", None: ""}[self.journal]
        return f"{self.type or '?'}{journal} on {self.source or '?'} ({self.options or '?'})"


def filesystem_of(path: Path) -> Filesystem:
    """Type, source, mount options and (for ext2/3/4) journal of the filesystem holding ``path``."""
    dev = os.stat(path).st_dev
    device = f"{os.major(dev)}:{os.minor(dev)}"
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == device:
                rest = fields[fields.index("-") + 1 :]
                fstype, source, options = [*rest, "", "", ""][:3]
                break
        else:
            return Filesystem("", "", "", None)
    journal = None
    if fstype in ("ext2", "ext3", "ext4"):  # jbd2 names a journal after the block device (dm-0, sda1, loop0)
        journal = Path(f"/proc/fs/jbd2/{Path(f'/sys/dev/block/{device}').resolve().name}-8").exists()
    return Filesystem(fstype, source, options, journal)


def power_cut_risk(path: Path) -> str | None:
    """Why the filesystem holding ``path`` cannot keep the gateway's data through a power cut, or None.

    The gateway's promises after a power cut rest on fsync and on renames being all-or-nothing, which takes a
    journal: ext2, and ext3/ext4 made without one, do not give that, and tmpfs keeps nothing through a reboot.
    Other filesystems are not judged.
    """
    filesystem = filesystem_of(path)
    if filesystem.type in ("tmpfs", "ramfs"):
        return f"{path} is on {filesystem.type}: everything in it is gone after a reboot or a power cut"
    if filesystem.journal is False:
        return (
            f"{path} is on {filesystem.type} without a journal: a power cut can undo renames and lose files the "
            "gateway had made durable; use ext4 with its journal or XFS"
        )
    return None


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_no_replace(src: Path | str, dst: Path | str) -> None:
    """Atomically rename ``src`` to ``dst``, failing with FileExistsError instead of replacing ``dst``.

    Linux renameat2(RENAME_NOREPLACE): one step, no moment with two names, works for any kind of entry,
    and watchers see a move (IN_MOVED_TO), which tells them the file is complete.
    """
    if _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise (
            OSError(err, os.strerror(err), str(src), None, str(dst))
            if err != errno.EEXIST
            else FileExistsError(err, os.strerror(err), str(dst))
        )


def rename_durably(src: Path, dst: Path, fd: int | None = None) -> None:
    """``rename_no_replace``, then an fsync of the file open as ``fd`` (if given) and of ``dst``'s folder: once it
    returns, a power cut keeps the new name, and with ``fd`` the data under it.

    Syncing the file after the rename lets one journal commit carry both (on ext4 the file's fsync commits the
    pending rename with it, and the folder's fsync finds nothing left to write): one commit instead of two. The
    name is visible a moment before the data is durable, as a local program's export is; what takes it from there
    syncs it itself (intake does), and a power cut in that moment leaves what a power cut leaves of such an export.
    """
    folder = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # before: no EMFILE once renamed
    try:
        rename_no_replace(src, dst)
        if fd is not None:
            os.fsync(fd)
        os.fsync(folder)
    finally:
        os.close(folder)


def held_for_writing(path: Path) -> bool | None:
    """Whether a process on this host has ``path`` open for writing; None when this process cannot tell.

    Linux grants a read lease only on a file that nobody has open for writing; the probe gives it back at once.
    A lease needs the file's owner or CAP_LEASE, and a filesystem that has leases (otherwise None). While it is
    held, a writer's open would send the holder SIGIO, whose default ends the process: a prober ignores SIGIO.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except BlockingIOError:
        return True  # a writer holds a write lease on it (Samba does for a client that may still write)
    except OSError:
        return False  # gone, or unreadable: what takes it next finds that out
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    finally:
        os.close(fd)  # gives the lease back
    return False


def move_no_replace(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` durably unless ``dst`` exists; True if moved now or by an earlier run (a redo)."""
    try:
        rename_durably(src, dst)
    except FileExistsError:
        return False
    except FileNotFoundError:
        return dst.exists() or dst.is_symlink()
    return True


class Folders:
    """Paths of the layout under one data directory, and the moves between them."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir).resolve()
        self.organs = self.root / "organs"
        self.spool_in = self.root / "spool" / "in"
        self.spool_out = self.root / "spool" / "out"
        self.tmp = self.root / "spool" / "tmp"
        self.spare = self.root / "spool" / "spare"
        self.quarantine = self.root / "quarantine"
        self.gnupg = self.root / "gnupg"
        self.hostkeys = self.root / "hostkeys"

    def space(self) -> Space:
        """Room left on the data dir's filesystem for an unprivileged user (the blocks reserved for root are not
        counted: the gateway runs under a user of its own)."""
        stats = os.statvfs(self.root)
        return Space(
            free_bytes=stats.f_bavail * stats.f_frsize,
            total_bytes=stats.f_blocks * stats.f_frsize,
            free_inodes=stats.f_favail,
            total_inodes=stats.f_files,
        )

    def hold_for_serve(self, wait: float = 5.0) -> None:
        """Take the data dir for this `serve` until the process ends (a lock on ``serve.lock``, which holds our
        pid); GatewayFault ``DATA_DIR_IN_USE`` when another serve still has it after ``wait`` seconds (one that is
        ending lets go within them). Two on one data dir would sweep each other's uploads and free each other's
        leases at start."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / SERVE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise GatewayFault(
                        f"another flam-gateway serve (pid {self.serving_pid() or '?'}) runs on {self.root}; stop it "
                        "first: two on one data dir would sweep each other's uploads",
                        code="DATA_DIR_IN_USE",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # the fd stays open, and the lock held, for the process's life

    def serving_pid(self) -> str | None:
        """The pid of the `serve` that holds this data dir, or None when none does."""
        try:
            fd = os.open(self.root / SERVE_LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        return None

    def create(self) -> None:
        for path in (self.organs, self.spool_in, self.spool_out, self.tmp, self.quarantine, self.hostkeys):
            path.mkdir(parents=True, exist_ok=True)
        for private in (self.root / "spool", self.quarantine, self.hostkeys):
            private.chmod(0o700)

    def create_organ(self, organ_id: str) -> None:
        for sub in ORGAN_SUBDIRS:
            (self.organs / organ_id / sub).mkdir(parents=True, exist_ok=True)

    def outbox(self, organ_id: str) -> Path:
        return self.organs / organ_id / "outbox"

    def outbox_bytes(self, organ_id: str) -> int:
        """The bytes of the files in ``organ_id``'s outbox, but for the SFTP door's uploads under way (the door
        counts those itself)."""
        total = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.outbox(organ_id)) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):  # taken by intake meanwhile
                    if not entry.name.startswith(UPLOAD_PREFIX) and entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def inbox(self, organ_id: str) -> Path:
        return self.organs / organ_id / "inbox"

    def receipts(self, organ_id: str) -> Path:
        return self.organs / organ_id / "receipts"

    def spooled(self, sender_id: str, transfer_id: str, file_name: str) -> Path:
        """Where a collected file lives until its dossier is done (the name is cut to fit NAME_MAX)."""
        return self.spool_in / sender_id / _fit(f"{transfer_id}.{file_name}")

    def encrypted(self, transfer_id: str) -> Path:
        return self.spool_out / f"{transfer_id}.pgp"

    def quarantined(self, sender_id: str, transfer_id: str, file_name: str) -> Path:
        return self.quarantine / sender_id / _fit(f"{transfer_id}.{file_name}")

    def temp_path(self, hint: str) -> Path:
        return self.tmp / f"{hint}.{secrets.token_hex(6)}.tmp"

    def write_atomic(self, dst: Path, data: bytes) -> None:
        """Write ``data`` under a temp name in the spool (swept if a crash leaves it), then onto ``dst`` durably."""
        write_durably(dst, data, tmp=self.temp_path(dst.name[:40]))

    def temp_files(self) -> list[Path]:
        """Temp files and hidden SFTP uploads: in progress now, or left behind by a killed run."""
        return [*self.tmp.glob("*"), *self.spool_out.glob("*.tmp"), *self._sftp_uploads()]

    def _sftp_uploads(self) -> list[Path]:
        """The SFTP door's hidden uploads in every outbox (``UPLOAD_PREFIX``)."""
        return list(self.organs.glob(f"*/outbox/{UPLOAD_PREFIX}*.upload"))

    def keep_partial_uploads(self) -> list[tuple[str, str, int]]:
        """Put the hidden SFTP uploads of partial upload names (``PARTIAL_XATTR``) that a killed run left behind back
        under those names, on disk, for their clients to resume; returns (organ, name, bytes) of each."""
        kept = []
        for path in sorted(self._sftp_uploads(), key=_newest_first):
            try:  # one descriptor for every check: a link or a pipe put in its place is never followed nor waited on
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                name, info = partial_name_of(fd), os.fstat(fd)
                if name and stat.S_ISREG(info.st_mode) and info.st_size and path.lstat().st_ino == info.st_ino:
                    os.fdatasync(fd)
                    rename_durably(path, path.parent / name)
                    kept.append((path.parent.parent.name, name, info.st_size))
            except OSError:  # the name taken meanwhile: swept
                continue
            finally:
                os.close(fd)
        return kept

    def sweep_tmp(self) -> int:
        """Remove temp files and unfinished SFTP uploads a killed run left behind; returns how many."""
        count = 0
        for path in self.temp_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                count += 1
        return count


def partial_name_of(file: int | Path) -> str | None:
    """The partial upload name a hidden SFTP upload (a descriptor, or a path not followed) is tagged with, if it is
    a usable one: the door tags each upload under such a name (``PARTIAL_XATTR``)."""
    try:
        if isinstance(file, int):
            raw = os.getxattr(file, PARTIAL_XATTR)
        else:
            raw = os.getxattr(file, PARTIAL_XATTR, follow_symlinks=False)
        name = raw.decode()
    except (OSError, UnicodeDecodeError):  # untagged (an upload under its final name), or no user attributes here
        return None
    return name if is_partial_name(name) and os.path.basename(name) == name else None


def _newest_first(path: Path) -> float:
    """Sort key: the most recently written first (two uploads to one partial name: the newer one is kept)."""
    try:
        return -path.lstat().st_mtime
    except OSError:
        return 0.0


def _fit(name: str) -> str:
    """Cut a file name to NAME_MAX bytes without splitting a UTF-8 character."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= NAME_MAX:
        return name
    return raw[:NAME_MAX].decode("utf-8", "ignore")
