"""Workers: claim transfers from the ledger, run pipeline steps, record them, and tidy up after each.

Recording a step is one ledger transaction that checks the state it starts from; the file work that
follows it (quarantine, wiping the spool, writing the receipt) is idempotent and is redone by
:meth:`Worker.tidy` after a crash, so every step is safe to repeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.folders import Folders, move_no_replace
from gateway.handlers.encrypt import Crypto
from gateway.handlers.receipt import STATUS_INFO, receipt_bytes, receipt_document, receipt_name
from gateway.handlers.route import Directory
from gateway.ledger.models import TransferData, utc
from gateway.ledger.store import DueReceipt, Ledger, StaleTransition
from gateway.lifecycle import RECORDED_WITH_NEXT, WORKABLE, State
from gateway.limits import Limits
from gateway.pipeline import Context, Step, advance, spool_paths
from gateway.wakeup import Wakeup

log = logging.getLogger(__name__)
FAULT_RECEIPT_AFTER = 3  # failed attempts before the sender is told (500: nothing lost, retrying)


class Worker:
    """Moves transfers along the lifecycle; several run side by side (threads or gateway nodes)."""

    def __init__(
        self,
        ledger: Ledger,
        folders: Folders,
        crypto: Crypto,
        limits: Limits,
        clock: Clock,
        *,
        owner: str,
        hold: timedelta,
        lease: timedelta,
        max_backoff: float = 300.0,
    ) -> None:
        self.ledger, self.folders, self.crypto, self.limits, self.clock = ledger, folders, crypto, limits, clock
        self.owner, self.hold, self.lease, self.max_backoff = owner, hold, lease, max_backoff
        self._owed: dict[str, tuple[str, datetime]] = {}  # releases the database refused: (error, retry at)
        self._written: list[tuple[str, int]] = []  # receipts written, marked so with the next claim

    def context(self, directory: Directory) -> Context:
        return Context(
            directory=directory,
            crypto=self.crypto,
            folders=self.folders,
            limits=self.limits,
            now=self.clock(),
            hold=self.hold,
        )

    def run(self, stop: threading.Event, wake: Wakeup) -> None:
        """Work until ``stop`` is set; sleep on ``wake`` (set by intake) when there is nothing to claim."""
        while not stop.is_set():
            try:
                self._settle_owed()
                busy = self.work_one()
            except Exception:  # the database may be restarting: never let a worker die
                log.exception("worker %s: claim failed, retrying", self.owner)
                busy = False
            if not busy:
                wake.wait(timeout=1.0)
        with contextlib.suppress(Exception):  # else the next start writes these receipts once more
            self.flush_written()

    def work_one(self) -> bool:
        """Claim one transfer and take it as far as it goes now; False when there was nothing to claim."""
        claimed = self.ledger.claim(self.owner, self.clock(), self.lease, written=self._written)
        self._written = []
        if claimed is None:
            return False
        transfer, directory = claimed.transfer, claimed.directory
        try:
            passed: list[tuple[State, Step]] = []  # steps done and not yet recorded (RECORDED_WITH_NEXT)
            while State(transfer.state) in WORKABLE:
                step = advance(transfer, self.context(directory))
                assert step is not None  # workable states always have a next step
                if (State(transfer.state), step.target) in RECORDED_WITH_NEXT:
                    passed.append((State(transfer.state), step))
                    transfer = transfer.model_copy(update={**step.values, "state": step.target.value})
                    continue
                transfer = self.record(transfer, step, passed)
                passed = []
        except StaleTransition:
            log.info("transfer %s moved on elsewhere", transfer.id)
            return True
        except (GatewayError, OSError) as exc:
            self._retry_later(transfer, exc)
            return True
        except Exception as exc:  # a bug must not stop the gateway or lose the dossier
            log.exception("unexpected error on transfer %s", transfer.id)
            self._retry_later(transfer, exc)
            return True
        return True  # the step that left the workable states ended the lease

    def record(self, transfer: TransferData, step: Step, passed: Sequence[tuple[State, Step]] = ()) -> TransferData:
        """Record ``step`` (after the ``passed`` ones, from the state each started in), then do its file work.

        The receipt the step owes is written at once and marked written with the worker's next claim (or by
        :meth:`flush_written`): a crash in between writes the same receipt file again, never loses it.
        """
        values = {k: v for _, done in passed for k, v in done.values.items()} | step.values
        moved = self.ledger.transition(
            transfer.id,
            passed[0][0] if passed else State(transfer.state),
            step.target,
            self.clock(),
            problems=step.problems,
            info=step.info,
            release=step.target not in WORKABLE,
            via=[done.target for _, done in passed],
            **values,
        )
        if any(problem.status == 500 for problem in step.problems):
            log.error("transfer %s rejected for the gateway's fault: %s", transfer.id, step.info)
        if moved.transfer.state == State.HELD:  # the admin's to mend: it waits for a key nobody else can import
            t, [problem] = moved.transfer, step.problems
            log.warning(
                "transfer %s from %s to %s held (%s: %s); delivered once %s has a usable OpenPGP key (organ "
                "pgp-key import), rejected with 311 after hold_days",
                t.id, t.sender_id, t.recipient_id, problem.code, problem.message, t.recipient_id,
            )  # fmt: skip
        self.tidy(moved.transfer, receipts=False)
        if moved.due is not None:
            self._write_receipt(moved.due)
            self._written.append((moved.transfer.id, moved.due.receipt.status_code))
        return moved.transfer

    def flush_written(self) -> None:
        """Mark the receipts written since the last claim (for callers that do not claim)."""
        self.ledger.mark_written(self._written)
        self._written = []

    def retry_held(self) -> None:
        """Give held transfers another look: key usable again, or hold time over (311)."""
        directory = self.ledger.directory()
        for transfer in self.ledger.transfers(state=State.HELD.value):
            held = transfer.model_copy(update={"updated_at": utc(transfer.updated_at)})
            with contextlib.suppress(StaleTransition):
                step = advance(held, self.context(directory))
                if step is not None:
                    self.record(held, step)
        self.flush_written()

    def pick_up(self, recipient_id: str, name: str) -> None:
        """The recipient removed a delivery from its inbox: FETCHED, and the sender gets 110."""
        transfer = self.ledger.delivered_as(recipient_id, name)
        if transfer is None or (self.folders.inbox(recipient_id) / name).exists():
            return
        with contextlib.suppress(StaleTransition):
            self.record(transfer, Step(State.FETCHED, info="picked up by the recipient"))
        self.flush_written()

    def tidy(self, transfer: TransferData, receipts: bool = True) -> None:
        """Idempotent file work owed by the transfer's state: quarantine, wipe the spool, write receipts."""
        plain, encrypted = spool_paths(transfer, self.folders)
        state = State(transfer.state)
        if state is State.REJECTED:
            if plain.exists() or plain.is_symlink():
                target = self.folders.quarantined(transfer.sender_id, transfer.id, transfer.file_name)
                target.parent.mkdir(parents=True, exist_ok=True)
                move_no_replace(plain, target)
            encrypted.unlink(missing_ok=True)
        elif state not in (State.RECEIVED, State.VALIDATED, State.HELD):
            plain.unlink(missing_ok=True)  # plaintext never lingers once it is encrypted
        if receipts:
            self.write_receipts(transfer.id)

    def write_receipts(self, transfer_id: str | None = None) -> int:
        """Write every receipt the ledger owes (one transfer's, or all); returns how many were written."""
        written: list[tuple[str, int]] = []
        try:
            for due in self.ledger.due_receipts(transfer_id):
                self._write_receipt(due)
                written.append((due.transfer.id, due.receipt.status_code))
        finally:
            self.ledger.mark_written(written)  # one transaction for all (those written before a failure too)
        return len(written)

    def _write_receipt(self, due: DueReceipt) -> None:
        """Write one receipt file into the sender's receipts folder (atomically; the same file when redone)."""
        t, r = due.transfer, due.receipt
        document = receipt_document(
            message_id=t.message_id,
            dossier_id=t.dossier_id,
            sender_id=t.sender_id,
            recipient_id=t.recipient_id,
            status_code=r.status_code,
            status_info=r.status_info,
            event_time=utc(r.event_time),
            file_name=t.file_name,
            errors=json.loads(r.errors),
        )
        folder = self.folders.receipts(t.sender_id)
        if not folder.is_dir():  # removed on the host: the receipt is owed all the same
            folder.mkdir(parents=True, exist_ok=True)
        name = receipt_name(t.id, t.message_id, t.file_name, r.status_code)
        self.folders.write_atomic(folder / name, receipt_bytes(document))

    def _retry_later(self, transfer: TransferData, exc: BaseException) -> None:
        """Back off exponentially; nothing is lost. The admin sees it in the log, the audit trail and fsck."""
        delay = min(self.max_backoff, 2.0 ** min(transfer.attempts, 10))
        log.warning("transfer %s: %s; retry in %.0f s (attempt %d)", transfer.id, exc, delay, transfer.attempts + 1)
        error, retry_at = f"{type(exc).__name__}: {exc}", self.clock() + timedelta(seconds=delay)
        try:
            self.ledger.release(transfer.id, error=error, retry_at=retry_at)
        except Exception:  # the database is gone too: release as soon as it is back, not when the lease ends
            self._owed[transfer.id] = (error, retry_at)
            return
        with contextlib.suppress(Exception):
            if transfer.attempts + 1 == FAULT_RECEIPT_AFTER:
                self.ledger.add_receipt(transfer.id, 500, STATUS_INFO[500], self.clock())
                self.write_receipts(transfer.id)

    def _settle_owed(self) -> None:
        """Release the transfers whose release the database refused (it was down); raises while it still is."""
        for transfer_id, (error, retry_at) in list(self._owed.items()):
            self.ledger.release(transfer_id, error=error, retry_at=retry_at)
            del self._owed[transfer_id]


def orphan_spool_files(folders: Folders) -> list[Path]:
    """Spool files, for the recovery pass that tidies transfers a killed run left half done."""
    files = [p for d in folders.spool_in.iterdir() for p in d.iterdir()]
    return files + list(folders.spool_out.glob("*.pgp"))
