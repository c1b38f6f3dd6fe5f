"""Access events from the SFTP door, written to the ledger in batches.

A busy door produces several events per file (login, listing, upload, download, removal). Writing each in
its own transaction made the database the door's bottleneck; the buffer writes them every ``interval``
seconds in one transaction, in order. A crash can lose at most the last interval's access events (never a
transfer's state, which the ledger writes synchronously).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from gateway.ledger.chain import AuditEvent
from gateway.ledger.store import Ledger

log = logging.getLogger(__name__)


class AuditBuffer:
    """Collects audit events from any thread; ``run`` flushes them until stopped (and once more after)."""

    def __init__(self, ledger: Ledger, interval: float = 0.2) -> None:
        self.ledger, self.interval = ledger, interval
        self._events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def add(self, at: datetime, action: str, detail: str, organ_id: str | None, ok: bool, peer: str | None) -> None:
        with self._lock:
            self._events.append(AuditEvent(at, action, detail, organ_id, ok, peer))

    def flush(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        if events:
            try:
                self.ledger.audit_many(events)
            except Exception:  # the database may be restarting: keep the events for the next round
                log.exception("could not write %d audit events; retrying", len(events))
                with self._lock:
                    self._events[:0] = events

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.flush()
        self.flush()
