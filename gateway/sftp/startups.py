"""Connections not yet logged in, counted by address (OpenSSH's MaxStartups and PerSourceMaxStartups).

Each holds a file descriptor and about 10 KB of the door until its login or ``login_timeout``. Without a bound,
one host that opens connections and never logs in (a flood, a broken scanner) takes the door's descriptors, and
the organs' logins are then refused. A new connection is refused (reset before the SSH version is sent, so it
costs no key exchange) when its address already holds ``per_address`` such connections, or the door ``total``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Startups:
    """The door's connections that have not logged in yet, and those refused since the last report."""

    per_address: int
    total: int
    waiting: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``, or refuse it (False) when a bound is reached."""
        if self.waiting[address] >= self.per_address or self.waiting.total() >= self.total:
            self.refused[address] += 1
            return False
        self.waiting[address] += 1
        return True

    def done(self, address: str) -> None:
        """An admitted connection logged in or went away."""
        self.waiting[address] -= 1
        if self.waiting[address] <= 0:
            del self.waiting[address]

    def report(self) -> list[tuple[str, int]]:
        """The connections refused since the last report, by address (then forgotten)."""
        refused, self.refused = sorted(self.refused.items()), Counter()
        return refused
