"""The one place that wires settings, ledger, keyring, folders, intake, workers and the SFTP door."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from functools import cached_property
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import uvloop

from gateway.clock import Clock, system_clock
from gateway.config import Settings, host_port
from gateway.crypto import Keyring
from gateway.errors import GatewayFault
from gateway.folders import Folders, power_cut_risk
from gateway.handlers.encrypt import Crypto
from gateway.health import short_of_space
from gateway.heap import give_back, one_arena
from gateway.intake import Intake
from gateway.ledger.audit_buffer import AuditBuffer
from gateway.ledger.store import Ledger
from gateway.retention import expire_deliveries
from gateway.sftp.hostkeys import ensure_host_keys
from gateway.wakeup import Wakeup
from gateway.worker import Worker, orphan_spool_files

if TYPE_CHECKING:
    from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15
_WORKER_NICENESS = 5


def openpgp_port(engine: str, keyring: Keyring) -> Crypto:
    """The OpenPGP engine named in the settings: Sequoia in-process (default) or a gpg process per file; both
    sign with the gateway key of ``keyring`` and take the recipients' keys from it."""
    if engine == "gpg":
        return keyring
    from gateway.sequoia import SequoiaCrypto  # not loaded when gpg is chosen

    return SequoiaCrypto(keyring)


class Gateway:
    """A gateway node over one data directory."""

    def __init__(self, settings: Settings, clock: Clock = system_clock, actor: str | None = None) -> None:
        """``actor``: the admin account an admin's command runs as, which the ledger names on its events."""
        self.settings, self.clock, self.actor = settings, clock, actor
        self.folders = Folders(settings.data_dir)
        self.door_port: int | None = None
        self.metrics: ThreadingWSGIServer | None = None  # the metrics endpoint, while `serve` runs with one
        self.last_round: tuple[float, float] | None = None  # the last maintenance round: its end (Unix time), seconds
        self._was_short = False  # whether the last maintenance round found the data dir's filesystem short

    @cached_property
    def wake(self) -> Wakeup:
        """Set when intake records work; the worker processes sleep on it (handed to them as they are forked)."""
        return Wakeup()

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.ledger_url, self.actor)

    @cached_property
    def keyring(self) -> Keyring:
        return Keyring(self.folders.gnupg, timeout=self.settings.gpg_timeout_seconds)

    @cached_property
    def crypto(self) -> Crypto:
        """Who signs and encrypts deliveries, as the ``openpgp`` setting says."""
        return openpgp_port(self.settings.openpgp, self.keyring)

    @cached_property
    def node(self) -> str:
        """This node's stable name (host + data dir): leases it held before a crash are its own to free."""
        digest = hashlib.sha256(str(self.folders.root).encode()).hexdigest()[:8]
        return f"{socket.gethostname()}:{digest}"

    def worker(self, index: int = 0) -> Worker:
        s = self.settings
        return Worker(
            self.ledger,
            self.folders,
            self.crypto,
            s.limits,
            self.clock,
            owner=f"{self.node}:{index}",
            hold=timedelta(days=s.hold_days),
            max_backoff=s.retry_max_seconds,
            lease=timedelta(seconds=s.gpg_timeout_seconds + 300),
        )

    @cached_property
    def intake(self) -> Intake:
        s, worker = self.settings, self.worker()
        return Intake(
            self.ledger,
            self.folders,
            self.clock,
            settle=s.settle_seconds,
            grace=s.unknown_suffix_grace_seconds,
            on_received=lambda: self.wake.set(),
            on_pickup=worker.pick_up,
        )

    def made(self) -> Gateway:
        """This gateway, once its ledger opens (LEDGER_UNAVAILABLE otherwise) and `init` has made its data dir
        (DATA_DIR_MISSING otherwise). With a PostgreSQL ledger a mistyped data dir would otherwise get keys and
        folders made in the wrong place, or fail on a folder that is not there; `serve` would start a node with
        keys of its own."""
        if not self.folders.organs.is_dir():
            self.ledger  # noqa: B018 - a ledger that cannot be opened is said first
            raise GatewayFault(
                f"no data dir at {self.folders.root}: `flam-gateway init` makes one (or do --data-dir and "
                "FLAM_GATEWAY_HOME name the one you meant?)",
                code="DATA_DIR_MISSING",
            )
        return self

    def init(self) -> str:
        """Create the data dir, ledger, gateway key pair and SSH host keys (idempotent); returns the key fpr."""
        self.folders.create()
        for organ in self.ledger.organs():
            self.folders.create_organ(organ.id)
        ensure_host_keys(self.folders.hostkeys)
        return self.keyring.ensure_gateway_key()

    def close(self) -> None:
        if "keyring" in self.__dict__:
            self.keyring.close()
        if "ledger" in self.__dict__:
            self.ledger.close()

    # -- running ----------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish what a killed run left half done, before new work starts."""
        worker = self.worker()
        for index in range(self.settings.workers):
            self.ledger.release_leases(f"{self.node}:{index}")
        for organ, name, size in self.folders.keep_partial_uploads():
            detail = f"/outbox/{name} kept after {size} bytes to resume (the gateway had ended with it open)"
            self.ledger.audit(self.clock(), "upload_interrupted", detail, organ_id=organ, ok=False)
        self.folders.sweep_tmp()
        self.intake.recover_spool()
        for path in orphan_spool_files(self.folders):
            transfer = self.ledger.transfer(path.name.partition(".")[0])
            if transfer is not None:
                worker.tidy(transfer)
        worker.write_receipts()
        self.reconcile_pickups()

    def reconcile_pickups(self) -> None:
        """Deliveries gone from their inbox while nobody watched (gateway down, dropped events) are fetched."""
        worker = self.worker()
        for recipient, name in self.ledger.delivered_files():
            if not (self.folders.inbox(recipient) / name).exists():
                worker.pick_up(recipient, name)

    def serve(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        """Run intake, workers, maintenance and the SFTP door until ``stop`` is set."""
        one_arena()  # before any thread: a gateway that runs for months would otherwise creep (heap.py)
        # a ledger outside the data dir (not the default SQLite) that is in use: a node joins it with `init`, the
        # gateway's keys copied in first
        if self.settings.database_url and self.ledger.organs():
            self.made()
        self.folders.hold_for_serve()
        self.init()
        if (risk := power_cut_risk(self.folders.root)) is not None:
            log.warning("data dir at risk: %s", risk)
        self.recover()
        if self.settings.metrics_listen:  # bound before the forks (a port in use stops serve before it starts)
            self.metrics = self._metrics_server()
        gc.freeze()  # the children share the parent's objects: keep the collector from copying their pages
        children = [self._start_door()] if self.settings.listen else []  # forked before any thread starts
        children += self._start_workers()
        threads = [threading.Thread(target=self.intake.run_due, args=(stop,), name="intake")]
        threads.append(threading.Thread(target=self._maintain, args=(stop,), name="maintenance"))
        if self.metrics is not None:
            threads.append(threading.Thread(target=self.metrics.serve_forever, name="metrics"))
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # intake's lease probe (folders.held_for_writing)
        self.intake.start_watching()
        for thread in threads:
            thread.start()
        self.intake.scan()
        if ready is not None:
            ready()
        ended = _first_to_end(children, stop)
        stop.set()
        for child in children:
            child.terminate()  # SIGTERM: the door closes its sessions, workers finish their step
        for child in children:
            child.join(timeout=60)
        self.intake.stop_watching()
        if self.metrics is not None:
            self.metrics.shutdown()
            self.metrics.server_close()
        for thread in threads:
            thread.join(timeout=30)
        if ended is not None:
            how = f"killed by {signal.Signals(-ended.exitcode).name}" if (ended.exitcode or 0) < 0 else "exited"
            raise GatewayFault(
                f"{ended.name} ended unexpectedly ({how}, code {ended.exitcode}); the gateway stopped so that its "
                "supervisor starts it afresh (nothing is lost: the next start finishes what was half done)",
                code="CHILD_ENDED",
            )

    def maintenance(self) -> dict[str, Callable[[], object]]:
        """The tasks of one maintenance round (every ``rescan_seconds``), by name, in the order they run."""
        worker = self.worker()
        return {
            "recover_spool": self.intake.recover_spool,
            "scan": self.intake.scan,
            "reconcile_pickups": self.reconcile_pickups,
            "retry_held": worker.retry_held,
            "write_receipts": worker.write_receipts,
            "expire_deliveries": lambda: expire_deliveries(worker, self.settings),
            "watch_space": self.watch_space,
        }

    def watch_space(self) -> None:
        """Say in the log when the data dir's filesystem runs short of space or inodes (once, as `status` would
        judge it), and when it has room again."""
        short = short_of_space(self.folders.space(), self.settings.room_needed)
        if short and not self._was_short:
            for reason in short:
                log.warning("short of space: %s", reason)
        elif self._was_short and not short:
            log.info("the data dir's filesystem has room again")
        self._was_short = bool(short)

    def _maintain(self, stop: threading.Event) -> None:
        tasks = self.maintenance()
        while not stop.wait(self.settings.rescan_seconds):
            started = time.monotonic()
            for name, task in tasks.items():
                try:
                    task()
                except Exception:  # the database may be restarting: retried next round
                    log.exception("maintenance task %s failed", name)
            self.last_round = (time.time(), time.monotonic() - started)
            self.wake.set()
            give_back()

    def _metrics_server(self) -> ThreadingWSGIServer:
        from gateway.metrics import GatewayCollector, metrics_server, tls_context  # prometheus_client: only here

        s = self.settings
        collector = GatewayCollector(self.ledger, self.clock, lambda: self.last_round, self.folders.space)
        try:
            tls = (
                tls_context(s.metrics_tls_cert, s.metrics_tls_key, s.metrics_client_ca) if s.metrics_tls_cert else None
            )
        except OSError as exc:  # a file missing or unreadable, a key that does not fit (ssl.SSLError)
            raise GatewayFault(
                f"the metrics endpoint cannot use its certificate, key or client CA ({s.metrics_tls_cert}, "
                f"{s.metrics_tls_key}, {s.metrics_client_ca or 'no client CA'}): {exc.strerror or exc}",
                code="METRICS_START",
            ) from exc
        try:
            return metrics_server(self.settings.metrics_listen, collector, tls)
        except OSError as exc:
            raise GatewayFault(
                f"the metrics endpoint cannot listen on {self.settings.metrics_listen}: {exc.strerror or exc}",
                code="METRICS_START",
            ) from exc

    def _start_door(self) -> multiprocessing.process.BaseProcess:
        """Fork the SFTP door into its own process (its event loop then never waits for the workers' GIL)."""
        ctx = multiprocessing.get_context("fork")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=self._door_main, args=(theirs,), name="flam-gateway-sftp")
        process.start()
        if not ours.poll(60):
            process.kill()
            raise GatewayFault("the SFTP door did not start within 60 s")
        answer = ours.recv()
        if isinstance(answer, str):
            process.join(10)
            raise GatewayFault(f"the SFTP door could not start: {answer}", code="SFTP_START")
        self.door_port = answer
        return process

    def _become_child(self) -> None:
        """In a forked child: die with the gateway, go by a name of our own in `ps` and `top` (flam-sftp,
        flam-worker-0, ...), and open our own database connections and keyring."""
        parent = os.getppid()
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive a killed gateway
        name = multiprocessing.current_process().name.replace("flam-gateway-", "flam-")
        _libc.prctl(_PR_SET_NAME, name.encode()[:15])
        if os.getppid() != parent:
            os._exit(1)
        self.ledger.engine.dispose(close=False)  # the parent's connections stay the parent's
        if self.metrics is not None:
            self.metrics.socket.close()  # the parent's listener: a child never answers a scrape
        for inherited in ("ledger", "keyring", "crypto", "intake"):
            self.__dict__.pop(inherited, None)

    def _start_workers(self) -> list[multiprocessing.process.BaseProcess]:
        """Fork one worker process per core (validation and the ledger are Python, so processes use every
        core) and spread the ``workers`` loops over them as threads: a loop waits on gpg, fsync and the
        ledger's write lock for a good part of each dossier, and another loop of the same process runs then."""
        ctx = multiprocessing.get_context("fork")
        count = self.settings.workers
        processes_wanted = min(count, os.cpu_count() or 1)
        per_process = [list(range(p, count, processes_wanted)) for p in range(processes_wanted)]
        processes = [
            ctx.Process(target=self._worker_main, args=(loops, self.wake), name=f"flam-gateway-worker-{p}")
            for p, loops in enumerate(per_process)
        ]
        # SIGTERM waits (blocked, so pending) until a child has its own handler: a stop in the moment after the
        # fork would otherwise hit the parent's handler copied into the child, and the child would run on.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            for process in processes:
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return processes

    def _worker_main(self, loops: list[int], wake: Wakeup) -> None:
        self._become_child()
        os.nice(_WORKER_NICENESS)  # people waiting on an SFTP session come before the batch behind them
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # held since the fork (see _start_workers)
        workers = [self.worker(index) for index in loops]  # built here: ledger and keyring once, before threads
        threads = [
            threading.Thread(target=w.run, args=(stop, wake), name=f"worker-{i}")
            for i, w in zip(loops, workers, strict=True)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self.close()

    def _door_main(self, pipe: Connection) -> None:
        """The door process: its own ledger connection and audit buffer, uvloop, stops on SIGTERM.

        asyncssh is imported here, after the fork: the parent and the workers never load it (~15 MiB each).
        """
        from gateway.sftp.server import DoorLimits, start_door

        self._become_child()
        ledger = self.ledger
        audit, flushing = AuditBuffer(ledger), threading.Event()
        flusher = threading.Thread(target=audit.run, args=(flushing,), name="audit")
        flusher.start()
        s = self.settings
        host, port = host_port(s.listen)
        limits = DoorLimits(
            login_timeout=s.login_timeout_seconds,
            idle_timeout=s.idle_timeout_seconds,
            max_sessions_per_organ=s.max_sessions_per_organ,
            max_sessions_total=s.max_sessions_total,
            max_startups_per_address=s.max_startups_per_address,
            max_startups=s.max_startups,
            max_auth_tries=s.max_auth_tries,
            upload_quota_bytes=s.upload_quota_bytes,
            allow_sha1=s.ssh_allow_sha1,
        )
        loop = uvloop.new_event_loop()
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        loop.add_signal_handler(signal.SIGINT, stopped.set)
        try:
            door = loop.run_until_complete(
                start_door(
                    host,
                    port,
                    organs_root=self.folders.organs,
                    spares=self.folders.spare,
                    host_keys=self.folders.hostkeys,
                    hooks=DoorHooks(ledger, audit, self.clock, self.folders, s.upload_quota_bytes),
                    limits=limits,
                )
            )
        except Exception as exc:
            flushing.set()
            pipe.send(f"{type(exc).__name__}: {exc}")
            raise
        pipe.send(door.port)
        loop.run_until_complete(stopped.wait())
        loop.run_until_complete(door.close())
        flushing.set()
        flusher.join(timeout=10)
        ledger.close()


def _first_to_end(
    children: list[multiprocessing.process.BaseProcess], stop: threading.Event
) -> multiprocessing.process.BaseProcess | None:
    """Wait for ``stop``; returns a child that ended before it (killed by the OOM killer, crashed), if any.

    Such a child is not forked again: the parent's threads run by now, and a fork then could copy a lock one of
    them holds. The gateway stops instead, with an error, and its supervisor (systemd) starts it afresh; a gateway
    without its door or its workers must not look alive.
    """
    while not stop.wait(1.0):
        if ended := next((child for child in children if not child.is_alive()), None):
            return ended
    return None


AUDIT_DETAIL_MAX = 2000  # characters of a door event's detail: a name of 255 bytes, escaped, fits


class DoorHooks:
    """What the SFTP door may ask of the rest of the gateway: the keys an organ may use, what it has waiting at
    the gateway and its upload quota (its own, or ``upload_quota`` from the settings), and audit."""

    def __init__(self, ledger: Ledger, audit: AuditBuffer, clock: Clock, folders: Folders, upload_quota: int) -> None:
        self.ledger, self.audit_buffer, self.clock, self.folders = ledger, audit, clock, folders
        self.upload_quota = upload_quota

    def authorized_keys(self, organ_id: str) -> list[str] | None:
        return self.ledger.authorized_keys(organ_id)

    def audit(self, organ_id: str | None, action: str, detail: str, ok: bool, peer: str) -> None:
        if len(detail) > AUDIT_DETAIL_MAX:  # a client's words in it (a name, an error): no flood of the trail
            detail = detail[:AUDIT_DETAIL_MAX] + "…"
        self.audit_buffer.add(self.clock(), action, detail, organ_id, ok, peer)

    def quota_reading(self, organ_id: str) -> tuple[int, int]:
        waiting = waiting_at_gateway(self.folders, self.ledger, [organ_id])[organ_id]
        organ = self.ledger.find_organ(organ_id)
        return waiting, self.upload_quota if organ is None else organ.upload_quota(self.upload_quota)


def waiting_at_gateway(folders: Folders, ledger: Ledger, organ_ids: Iterable[str]) -> dict[str, int]:
    """The bytes each organ has waiting at the gateway (what its upload quota counts): the files in its outbox, read
    first (a file intake takes in between is counted twice for a moment, never missed), and its dossiers in the
    spool."""
    outboxes = {organ_id: folders.outbox_bytes(organ_id) for organ_id in organ_ids}
    spooled = ledger.spooled_bytes()
    return {organ_id: size + spooled.get(organ_id, 0) for organ_id, size in outboxes.items()}


def notify_systemd(message: str) -> None:
    """Tell systemd (Type=notify) about our state, if it is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)
