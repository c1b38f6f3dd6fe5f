"""Waking idle workers in other processes when intake records new work, without a lock between processes.

The workers used to sleep on a ``multiprocessing.Event``, whose condition holds a semaphore shared by every
process. A worker killed while it held that semaphore (the OOM killer does not wait for a good moment) left it
held for ever: the parent blocked in ``set()`` and the other workers in ``wait()``, and the gateway stood still
while it looked alive. A pipe has nothing to hold: ``set`` writes a byte without blocking, ``wait`` sleeps
until the pipe is readable (or the timeout passes) and empties it.
"""

from __future__ import annotations

import contextlib
import os
import select


class Wakeup:
    """Wake every worker waiting now, in any process forked after this was made; writes never block."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        """Wake the waiting workers (a byte already waiting in the pipe does as well: a full pipe is fine)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"!")

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout`` seconds have passed."""
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        if poller.poll(timeout * 1000):
            with contextlib.suppress(BlockingIOError):  # another waiter emptied it first: woken all the same
                os.read(self._read, 65536)
