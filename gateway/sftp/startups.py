"""Connections not yet logged in, counted by address (OpenSSH's MaxStartups and PerSourceMaxStartups), and the
failed logins they make.

Each such connection holds a file descriptor and about 10 KB of the door until its login or ``login_timeout``.
Without a bound, one host that opens connections and never logs in (a flood, a broken scanner) takes the door's
descriptors, and the organs' logins are then refused. A new connection is refused (reset before the SSH version
is sent, so it costs no key exchange) when its address already holds ``per_address`` such connections, or the
door ``total``.

A failed login is an audit event; one host trying keys on connection after connection made 800 a second (a
disk's worth of audit trail in weeks). An address's first ``logins_recorded`` failures of a round are recorded
one by one; the rest are counted and recorded as one event when the round ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Startups:
    """The door's connections that have not logged in yet, and what they were refused this round."""

    per_address: int
    total: int
    logins_recorded: int = 20
    waiting: Counter[str] = field(default_factory=Counter)
    in_all: int = 0  # the sum of ``waiting``, kept as it changes: asked at every connection
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``, or refuse it (False) when a bound is reached."""
        if self.waiting[address] >= self.per_address or self.in_all >= self.total:
            self.refused[address] += 1
            return False
        self.waiting[address] += 1
        self.in_all += 1
        return True

    def done(self, address: str) -> None:
        """An admitted connection logged in or went away."""
        self.waiting[address] -= 1
        self.in_all -= 1
        if self.waiting[address] <= 0:
            del self.waiting[address]

    def login_failed(self, address: str) -> bool:
        """Count a failed login from ``address``; True while this round's failures are recorded one by one."""
        self.failed[address] += 1
        return self.failed[address] <= self.logins_recorded

    def end_round(self) -> list[tuple[str, str, str]]:
        """End the round: an audit event (action, address, detail) for each address refused connections or failed
        logins not recorded one by one during it; the counts start afresh."""
        refused = [
            ("connections_refused", a, f"{n} connection(s) refused: too many not logged in yet")
            for a, n in sorted(self.refused.items())
        ]
        failed = [
            ("login_failed", a, f"{n - self.logins_recorded} more failed login(s), not recorded one by one")
            for a, n in sorted(self.failed.items())
            if n > self.logins_recorded
        ]
        self.refused, self.failed = Counter(), Counter()
        return refused + failed
