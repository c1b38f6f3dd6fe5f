"""Intake: notices complete files in outboxes and deliveries removed from inboxes.

A file counts as complete when its writer closed it and it then stayed unchanged for the settle time
(by its change time, which only the kernel sets), or at once when it was renamed into the outbox. Temp
names (see ``folders.is_temp_name``) are never taken; a name with an unknown suffix is taken (to be
rejected with 200) only after a grace time. The outbox file is renamed into the private spool (the
commit: a rename succeeds once, whichever node or thread tries), then recorded as RECEIVED. A start-up
scan and a periodic rescan catch what arrived while the gateway was down or what an overflowing inotify
queue dropped.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

from gateway.clock import Clock
from gateway.folders import Folders, fsync_dir, held_for_writing, is_temp_name, new_transfer_id, text_name
from gateway.ledger.models import TransferData
from gateway.ledger.store import Ledger

log = logging.getLogger(__name__)
KNOWN_SUFFIXES = (".json", ".zip")

# watchdog holds back an IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and its queue is FIFO: every
# collection (outbox -> the unwatched spool) stalled all later events by 0.5 s. The kernel queues both halves
# of a rename together, so a short wait pairs them just as well; an unpaired half is seen as delete/create.
InotifyMoveEventGrouper.delay = 0.02
_BATCH = 200  # files collected and recorded in one transaction


class Intake:
    """Watches ``organs/`` and hands complete outbox files to the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        folders: Folders,
        clock: Clock,
        *,
        settle: float,
        grace: float,
        on_received: Callable[[], None],
        on_pickup: Callable[[str, str], None],
    ) -> None:
        self.ledger, self.folders, self.clock = ledger, folders, clock
        self.settle, self.grace = settle, grace
        self.on_received, self.on_pickup = on_received, on_pickup
        self._due: list[tuple[float, str, bool]] = []  # heap of (monotonic due time, path, renamed in)
        self._cv = threading.Condition()
        self._observer: Observer | None = None
        self._blind = False  # warned that a writer's open file could not be probed

    # -- events -----------------------------------------------------------------------------------------

    def start_watching(self) -> None:
        self._observer = Observer()
        self._observer.schedule(_Events(self), str(self.folders.organs), recursive=True, event_filter=_WANTED_EVENTS)
        self._observer.start()

    def stop_watching(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)

    def notice(self, path: Path | str, delay: float, *, renamed_in: bool = False) -> None:
        """Look at ``path`` after ``delay`` seconds; a file renamed in (or committed by SFTP) is complete."""
        with self._cv:
            heapq.heappush(self._due, entry := (time.monotonic() + delay, str(path), renamed_in))
            if self._due[0] is entry:  # due before all others: the waiting thread must wake earlier than planned
                self._cv.notify()

    def run_due(self, stop: threading.Event) -> None:
        """Collect noticed files as they fall due, in batches, until ``stop`` is set."""
        while not stop.is_set():
            with self._cv:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = self._due[0][0] - time.monotonic() if self._due else 0.5
                    self._cv.wait(timeout=max(0.0, min(timeout, 0.5)))
                    if stop.is_set():
                        return
                batch = []
                while self._due and self._due[0][0] <= time.monotonic() and len(batch) < _BATCH:
                    _, path, renamed_in = heapq.heappop(self._due)
                    batch.append((Path(path), renamed_in))
            self._take(batch)

    # -- scans ------------------------------------------------------------------------------------------

    def scan(self) -> int:
        """Consider every entry in every outbox now (start-up and periodic rescan); returns how many."""
        entries = [(e, False) for outbox in sorted(self.folders.organs.glob("*/outbox")) for e in outbox.iterdir()]
        return sum(self._take(entries[i : i + _BATCH]) for i in range(0, len(entries), _BATCH))

    def recover_spool(self) -> int:
        """Record spool files a killed run renamed in but did not record yet; returns how many."""
        found = []
        for sender_dir in self.folders.spool_in.iterdir():
            for entry in sender_dir.iterdir():
                transfer_id, _, name = entry.name.partition(".")
                if len(transfer_id) != 32:
                    continue
                if (text := text_name(name)) != name:  # spooled by a gateway before text_name: never recordable
                    entry = entry.rename(self.folders.spooled(sender_dir.name, transfer_id, text))
                    name = entry.name.partition(".")[2]
                found.append((sender_dir.name, transfer_id, name, entry))
        known = self.ledger.known_transfer_ids([transfer_id for _, transfer_id, _, _ in found])
        return self._record([f for f in found if f[1] not in known])

    # -- the work ---------------------------------------------------------------------------------------

    def _take(self, entries: list[tuple[Path, bool]]) -> int:
        """Collect the complete entries among ``entries`` into the spool and record them in one transaction."""
        collected = []
        for path, renamed_in in entries:
            try:
                if (taken := self._collect(path, renamed_in)) is not None:
                    collected.append(taken)
            except Exception:  # a strange entry must not stop intake: the next scan retries
                log.exception("intake of %s failed; the next scan retries", path)
        try:
            return self._record(collected)
        except Exception:  # the disk or the database failed: the spool files are recorded by recover_spool later
            log.exception("could not record %d collected files; retrying from the spool", len(collected))
            return 0

    def _collect(self, path: Path, renamed_in: bool) -> tuple[str, str, str, Path] | None:
        """Rename ``path`` into the spool if it is a complete outbox entry; re-notice it when it may become one."""
        if path.parent.name != "outbox" or path.parent.parent.parent != self.folders.organs:
            return None
        if is_temp_name(path.name):
            return None
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        known = path.name.lower().endswith(KNOWN_SUFFIXES)
        wait = (0.0 if renamed_in else self.settle) if known else self.grace
        regular = stat.S_ISREG(info.st_mode)
        if not regular:
            wait = max(self.settle, 1.0)  # folders, links and pipes: rejected once they stay put
        # the change time, not the modification time: the kernel sets it at every write, rename or change of
        # times, and no writer can set it, so a file stamped in the future (a writer's clock ahead, `put -p`,
        # `cp -p`) is not held until that time comes
        age = time.time() - info.st_ctime
        if age < wait:
            self.notice(path, wait - age + 0.05, renamed_in=renamed_in)
            return None
        if regular and not renamed_in and self._still_written(path):
            return None  # its writer paused for longer than the settle time: its close notices the file again
        sender_id, transfer_id, name = path.parent.parent.name, new_transfer_id(), text_name(path.name)
        spooled = self.folders.spooled(sender_id, transfer_id, name)
        spooled.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, spooled)  # the commit: only one collector wins
        except FileNotFoundError:
            return None
        return sender_id, transfer_id, name, spooled

    def _still_written(self, path: Path) -> bool:
        held = held_for_writing(path)
        if held is None and not self._blind:
            self._blind = True
            log.warning(
                "cannot tell whether %s is still being written (leases need the file's owner or CAP_LEASE): "
                "files written in place are taken once unchanged for the settle time",
                path,
            )
        return bool(held)

    def _record(self, collected: list[tuple[str, str, str, Path]]) -> int:
        if not collected:
            return 0
        for folder in {spooled.parent for *_, spooled in collected}:
            fsync_dir(folder)  # the renames into the spool must outlast a power cut before the ledger answers for them
        now = self.clock()
        transfers = []
        for sender_id, transfer_id, name, spooled in collected:
            size, digest = _sync_and_hash(spooled)
            transfers.append(TransferData.arrival(transfer_id, sender_id, name, now, size=size, sha256=digest))
        count = self.ledger.receive(transfers)
        log.info("received %d file(s)", count)
        self.on_received()
        return count


def _sync_and_hash(path: Path) -> tuple[int, str]:
    """fsync a regular file, then its size and SHA-256, read in chunks without following links; (0, "") otherwise.

    The ledger records the file next, and from then on the gateway answers for it: a local program that wrote it
    without an fsync (the usual export) would otherwise leave it empty after a power cut, recorded as received.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 0, ""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return 0, ""
    os.fsync(fd)
    with os.fdopen(fd, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
        return fh.tell(), digest.hexdigest()  # the size is what was hashed: read to the end


# What _Events handles. Asking inotify for nothing else spares the watcher the events of every write, open,
# read-only close and attribute change (a receipt written, a file hashed, each block of an upload).
_WANTED_EVENTS = [
    FileClosedEvent,
    FileCreatedEvent,
    DirCreatedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


class _Events(FileSystemEventHandler):
    """Translates watchdog events into intake notices and pick-ups."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    def on_closed(self, event: FileSystemEvent) -> None:
        self._notice(event.src_path, self.intake.settle)

    def on_created(self, event: FileSystemEvent) -> None:
        # a file moved in from outside the watched tree arrives as a creation: it is taken once settled
        self._notice(event.src_path, self.intake.settle)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._notice(event.dest_path, 0.0, renamed_in=True)
        self._maybe_pickup(_text(event.src_path))

    def _notice(self, path: str | bytes, delay: float, *, renamed_in: bool = False) -> None:
        # temp names are never taken (each SFTP upload's hidden file, a writer's .part): not even queued
        text = _text(path)
        if not is_temp_name(os.path.basename(text)):
            self.intake.notice(text, delay, renamed_in=renamed_in)

    def on_deleted(self, event: FileSystemEvent) -> None:
        self._maybe_pickup(_text(event.src_path))

    def _maybe_pickup(self, src: str) -> None:
        path = Path(src)
        if path.parent.name != "inbox" or path.parent.parent.parent != self.intake.folders.organs:
            return
        try:
            self.intake.on_pickup(path.parent.parent.name, path.name)
        except Exception:  # raised here, it would end watchdog's thread, and every later event with it
            log.exception("could not record the removal of %s; the next maintenance round looks again", path)


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)
