"""Each organ's upload quota: the bytes it may have waiting at the gateway (in its outbox and the spool, not yet
delivered or rejected), so that one organ, or one stolen key, cannot fill the disk every organ shares.

What waits, and the organ's quota (its own, or the gateway's setting), are read through a hook (the outbox and the
ledger; it may block, so in a thread) at most once a second per organ, on the side; the uploads the door has
committed since a reading began and those under way are counted as they happen. So a reading is off only by what
others added (a local program, another node's door) or what was delivered or rejected since: an upload that the
last reading would refuse waits for a new one first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from asyncssh import SFTPQuotaExceeded

from gateway.health import mib, sized

log = logging.getLogger(__name__)

_FRESH_SECONDS = 1.0
_WAIT_SECONDS = 2.0  # the longest an upload waits for a reading: a ledger that does not answer holds up no upload


class Quota:
    """The door's count of what each organ has waiting, held to the quota its last reading found (0: none), or
    to ``setting`` (the gateway's) until one has. ``read(organ)``: what the organ has waiting and its quota."""

    def __init__(self, setting: int, read: Callable[[str], tuple[int, int]]) -> None:
        self.setting, self._read = setting, read
        self._known: dict[str, int] = {}  # the last reading
        self._limit: dict[str, int] = {}  # and the quota it found
        self._read_at: dict[str, float] = {}
        self._reading: dict[str, asyncio.Future[tuple[int, int]]] = {}  # the reading under way
        self._committed: defaultdict[str, int] = defaultdict(int)  # uploads stored since the last reading began
        self._under_way: defaultdict[str, int] = defaultdict(int)  # bytes written to uploads not yet closed

    def _start(self, organ: str) -> asyncio.Future[tuple[int, int]]:
        counted = self._committed[organ]  # the reading sees these (and maybe a few more, counted twice until the next)
        reading = self._reading[organ] = asyncio.get_running_loop().run_in_executor(None, self._read, organ)

        def done(read: asyncio.Future[tuple[int, int]]) -> None:
            if self._reading.get(organ) is read:
                del self._reading[organ]
            self._read_at[organ] = time.monotonic()
            if read.cancelled() or read.exception() is not None:
                log.warning("quota: cannot read what %s has waiting (%s); the last reading stands", organ, read)
                return
            self._known[organ], self._limit[organ] = read.result()
            self._committed[organ] -= counted

        reading.add_done_callback(done)
        return reading

    def refresh(self, organ: str) -> None:
        """Read what ``organ`` has waiting and its quota again, on the side, if the last reading is over a second
        old."""
        last = self._read_at.get(organ, -_FRESH_SECONDS)
        if organ not in self._reading and time.monotonic() - last >= _FRESH_SECONDS:
            self._start(organ)

    async def fresh(self, organ: str) -> None:
        """Wait for a reading of what ``organ`` has waiting begun now (after the one under way, which may have begun
        before the door's last uploads), at most 2 s for each: the last reading stands if none comes."""
        with contextlib.suppress(Exception):  # a timeout, or the reading's own failure (logged by it)
            if (under_way := self._reading.get(organ)) is not None:
                await asyncio.wait_for(asyncio.shield(under_way), _WAIT_SECONDS)
            await asyncio.wait_for(asyncio.shield(self._start(organ)), _WAIT_SECONDS)

    def waiting(self, organ: str) -> int:
        """The bytes ``organ`` has waiting at the gateway, its uploads under way included."""
        self.refresh(organ)
        return self._known.get(organ, 0) + self._committed[organ] + self._under_way[organ]

    def limit(self, organ: str) -> int:
        """``organ``'s quota as its last reading found it (the setting until one has); 0 for none."""
        return self._limit.get(organ, self.setting)

    def over(self, organ: str, size: int, written: int = 0) -> int | None:
        """What ``organ`` has waiting besides an upload of ``size`` bytes (``written`` of them so far), if with it
        the organ would pass its quota; else None."""
        others = self.waiting(organ) - written
        limit = self.limit(organ)
        return others if limit and others + size > limit else None

    def check(self, organ: str, size: int, written: int, what: str) -> None:
        """Raise SFTPQuotaExceeded if the upload ``what``, ``size`` bytes once this write is done (``written`` of
        them so far), would take ``organ`` past its quota."""
        if (others := self.over(organ, size, written)) is not None:
            limit = sized(self.limit(organ))
            raise SFTPQuotaExceeded(
                f"{what} was not stored: it would take {organ} past its quota of {limit} waiting at the gateway "
                f"({mib(others)} are waiting already: in its outbox, or received and not yet delivered); "
                "send it again once those are delivered"
            )

    def wrote(self, organ: str, size: int) -> None:
        """``size`` more bytes written to an upload of ``organ``'s under way."""
        self._under_way[organ] += size

    def ended(self, organ: str, size: int, stored: bool) -> None:
        """An upload of ``size`` bytes closed: ``stored`` in the outbox, or discarded."""
        self._under_way[organ] -= size
        if stored:
            self._committed[organ] += size
