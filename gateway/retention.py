"""Expiry and retention: uncollected deliveries expire (701 warning, then 204), old data is destroyed.

EntsV Art. 13a keeps platform data for 12 months: ledger and audit rows older than ``retention_days`` and
quarantined originals older than ``quarantine_days`` are purged. Receipts a sender leaves in its folder are
removed at the age an uncollected delivery expires (``expire_after_days``): legacy software that never reads
them would otherwise fill the folder by a file per dossier for ever (the ledger keeps each status for the
admin). An upload cut off under a temporary name (``x.zip.filepart``), which the SFTP door keeps for its client to
resume, is removed once nobody has changed it for ``partial_upload_days``. All of it runs against an injectable clock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.config import Settings
from gateway.folders import is_partial_name, text_name
from gateway.handlers.receipt import STATUS_INFO
from gateway.ledger.models import utc
from gateway.ledger.store import StaleTransition
from gateway.lifecycle import State
from gateway.pipeline import Step
from gateway.worker import Worker


@dataclass(frozen=True)
class PurgeReport:
    expired: int
    warned: int
    quarantined_destroyed: int
    transfers_purged: int
    events_purged: int
    receipts_removed: int
    partials_removed: int


def expire_deliveries(worker: Worker, settings: Settings) -> tuple[int, int]:
    """Warn (701) and then expire (204) deliveries nobody picked up; returns (warned, expired)."""
    now = worker.clock()
    expire_after = timedelta(days=settings.expire_after_days)
    warn_at = expire_after - timedelta(days=settings.warn_before_expiry_days)
    warned = expired = 0
    waiting = worker.ledger.transfers(state=State.DELIVERED.value, changed_before=now - warn_at)
    # asked once: a transaction per delivery warned before cost ~0.3 ms on SQLite and ~1 ms on PostgreSQL each round
    warned_before = worker.ledger.owed_already([t.id for t in waiting], 701)
    for transfer in waiting:
        age = now - utc(transfer.updated_at)
        inbox_file = worker.folders.inbox(transfer.recipient_id or "") / (transfer.delivered_name or "")
        if age >= expire_after:
            if not inbox_file.exists():
                worker.pick_up(transfer.recipient_id or "", transfer.delivered_name or "")
                continue
            with contextlib.suppress(StaleTransition):
                # the ledger first: a pick-up racing with us must not be reported as expired
                worker.record(transfer, Step(State.EXPIRED, info=STATUS_INFO[204]))
                inbox_file.unlink(missing_ok=True)
                expired += 1
        elif (
            age >= warn_at
            and transfer.id not in warned_before
            and worker.ledger.add_receipt(transfer.id, 701, STATUS_INFO[701], now)
        ):
            worker.write_receipts(transfer.id)
            warned += 1
    return warned, expired


def purge(worker: Worker, settings: Settings) -> PurgeReport:
    """Expire deliveries, destroy old quarantined originals, purge old ledger and audit rows."""
    now = worker.clock()
    warned, expired = expire_deliveries(worker, settings)
    destroyed = 0
    quarantine_cutoff = now - timedelta(days=settings.quarantine_days)
    for transfer in worker.ledger.transfers(state=State.REJECTED.value):
        if utc(transfer.updated_at) < quarantine_cutoff:
            path = worker.folders.quarantined(transfer.sender_id, transfer.id, transfer.file_name)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                destroyed += 1
            elif path.exists() or path.is_symlink():
                path.unlink()
                destroyed += 1
    cutoff = now - timedelta(days=settings.retention_days)
    purged = worker.ledger.purge_transfers(cutoff, now)
    events = worker.ledger.purge_events(cutoff)
    receipts = _remove_old_receipts(worker, now - timedelta(days=settings.expire_after_days))
    partials = _remove_abandoned_partials(worker, now, timedelta(days=settings.partial_upload_days))
    return PurgeReport(expired, warned, destroyed, purged, events, receipts, partials)


def _remove_old_receipts(worker: Worker, cutoff: datetime) -> int:
    """Remove receipts written before ``cutoff`` that their sender has not collected; returns how many."""
    removed, limit = 0, cutoff.timestamp()
    for _, entry, info in _files(worker, worker.folders.receipts, lambda _: True):
        if info.st_mtime < limit and _unlink(entry):
            removed += 1
    return removed


def _remove_abandoned_partials(worker: Worker, now: datetime, unchanged: timedelta) -> int:
    """Remove the partial uploads in outboxes (``x.zip.filepart``: ``folders.is_partial_name``) that nobody has
    changed (their change time, which only the kernel sets) for ``unchanged``; returns how many."""
    removed, limit = 0, (now - unchanged).timestamp()
    for organ_id, entry, info in _files(worker, worker.folders.outbox, is_partial_name):
        if info.st_ctime < limit and _unlink(entry):
            since = datetime.fromtimestamp(info.st_ctime, UTC).strftime("%Y-%m-%d %H:%M UTC")
            detail = f"/outbox/{text_name(entry.name)}: {info.st_size} bytes, unchanged since {since}"
            worker.ledger.audit(now, "partial_removed", detail, organ_id=organ_id)
            removed += 1
    return removed


def _files(
    worker: Worker, folder_of: Callable[[str], Path], wanted: Callable[[str], bool]
) -> Iterator[tuple[str, os.DirEntry[str], os.stat_result]]:
    """The plain files of every organ's ``folder_of(organ_id)`` whose name is ``wanted``: (organ id, entry, lstat)."""
    for organ in worker.ledger.organs():
        with contextlib.suppress(FileNotFoundError), os.scandir(folder_of(organ.id)) as entries:
            for entry in entries:
                if wanted(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        yield organ.id, entry, entry.stat(follow_symlinks=False)


def _unlink(entry: os.DirEntry[str]) -> bool:
    """Remove ``entry``; False if it has gone meanwhile (collected, or removed by its organ)."""
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        return False
    return True
