"""Empty files made ahead of the SFTP uploads that will need them.

Creating a file is mostly the filesystem allocating its inode. On ext4 without a journal, after the many
deletions a gateway makes, that costs up to ~0.9 ms of kernel CPU (ext4 then checks every free inode of
the group for a recent deletion), and a client sending many small files waits for it at every open. The
pool makes the files on its own thread while the door waits for its clients; an upload's open takes a ready
one and renames it into the outbox (~25 µs). Each upload still gets a new inode: only when it is made changes.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import threading
from pathlib import Path

from gateway.folders import rename_no_replace

log = logging.getLogger(__name__)

_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RETRY_SECONDS = 1.0  # the pause after a failed creation (disk full, too many open files)


class SparePool:
    """Up to ``size`` empty files, open and ready, in ``folder`` (on the outboxes' filesystem)."""

    def __init__(self, folder: Path, size: int = 32, mode: int = 0o640) -> None:
        self.folder, self.size, self.mode = Path(folder), size, mode
        self._ready: collections.deque[tuple[int, Path]] = collections.deque()
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="spare-files", daemon=True)

    def start(self) -> None:
        """Create or empty the folder (spares of an earlier run are nobody's) and begin filling the pool."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.iterdir():
            path.unlink(missing_ok=True)
        self._wanted.set()
        self._thread.start()

    @property
    def ready(self) -> int:
        """How many spares are made and waiting (a spare's file appears in the folder a moment before it counts)."""
        return len(self._ready)

    def take(self, dst: Path) -> int:
        """An open descriptor of a new empty file named ``dst``, which must not exist yet.

        A ready file is renamed to ``dst``; when none is ready, or it cannot be moved there, ``dst`` is made on
        the spot, so an upload never waits for the pool.
        """
        moved = self._move_ready(dst)
        return os.open(dst, _CREATE, self.mode) if moved is None else moved

    def close(self) -> None:
        """Stop filling and remove the spares left."""
        self._stop.set()
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        while self._ready:
            fd, spare = self._ready.popleft()
            os.close(fd)
            spare.unlink(missing_ok=True)

    def _move_ready(self, dst: Path) -> int | None:
        """A ready spare, renamed to ``dst``; None when none is ready or it cannot go there."""
        try:
            fd, spare = self._ready.popleft()
        except IndexError:
            self._wanted.set()
            return None
        taken: int | None = fd
        try:
            rename_no_replace(spare, dst)
        except OSError:
            if os.path.lexists(spare):  # dst's side failed (another filesystem, a name taken): keep the spare
                self._ready.appendleft((fd, spare))
                return None
            os.close(fd)  # removed behind our back
            taken = None
        self._wanted.set()  # one fewer ready: make another
        return taken

    def _fill(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.size and not self._stop.is_set():
                spare = self.folder / secrets.token_hex(8)
                try:
                    self._ready.append((os.open(spare, _CREATE, self.mode), spare))
                except OSError as exc:
                    log.warning("cannot make a spare upload file in %s: %s", self.folder, exc)
                    self._stop.wait(_RETRY_SECONDS)  # at most one try a second while it fails
                    break
