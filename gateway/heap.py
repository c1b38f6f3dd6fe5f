"""Keep a long-running process's C heap from creeping: one malloc arena, and free pages handed back.

glibc gives each thread that allocates its own arena and keeps every page it once touched, so a process whose
threads take turns at short bursts of work (intake, maintenance, the watcher) holds a little more memory after
each night. Where the C library is not glibc these are no-ops.
"""

from __future__ import annotations

import ctypes

_libc = ctypes.CDLL(None)
_M_ARENA_MAX = -8


def one_arena() -> None:
    """Let every thread of this process (and of the children it forks) allocate from the same arena.

    Call it before threads start: arenas made earlier stay in use. The threads that share the arena take
    turns at the interpreter lock anyway, so they seldom wait for each other's allocations.
    """
    if hasattr(_libc, "mallopt"):
        _libc.mallopt(_M_ARENA_MAX, 1)


def give_back() -> None:
    """Return the heap's free pages to the system (they stay reserved and are reused when needed)."""
    if hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
