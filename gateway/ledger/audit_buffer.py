"""Access events from the SFTP door, written to the ledger in batches.

A busy door produces several events per file (login, listing, upload, download, removal). Writing each in
its own transaction made the database the door's bottleneck; the buffer writes them every ``interval``
seconds in one transaction, in order. A crash can lose at most the last interval's access events (never a
transfer's state, which the ledger writes synchronously).

A batch that fails is written event by event: an event the database refuses whatever happens (text it cannot
store) is written as ``unwritable`` with its fields escaped to ASCII, so that it never holds up the events after
it; when the database itself fails, the events wait for the next round, in order.
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
            except Exception as exc:  # the one-by-one round below logs the traceback if the database itself fails
                log.warning("could not write %d audit events (%s); writing them one by one", len(events), exc)
                if left := self._one_by_one(events):
                    with self._lock:
                        self._events[:0] = left

    def _one_by_one(self, events: list[AuditEvent]) -> list[AuditEvent]:
        """Write each event alone, an unwritable one escaped; returns those left for the next round."""
        for i, event in enumerate(events):
            try:
                self.ledger.audit_many([event])
            except Exception:
                try:
                    self.ledger.audit_many([_escaped(event)])
                except Exception:  # the database itself fails (restarting?): this event and the rest wait
                    log.exception("could not write %d audit events; retrying", len(events) - i)
                    return events[i:]
                log.error("audit event %r could not be written as it was; written escaped", event)
        return []

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.flush()
        self.flush()


def _escaped(event: AuditEvent) -> AuditEvent:
    """``event`` as one the database always takes: its texts in ``ascii()`` form in the detail, no organ or peer."""
    fields = f"action {event.action!a} organ {event.organ_id!a} peer {event.peer!a}"
    return AuditEvent(event.at, "unwritable", f"{fields} detail {event.detail!a}", None, event.ok, None)
