"""Faults of a production night: a hanging gpg, the gpg-agent gone, PostgreSQL restarted under load, a
recipient key withdrawn mid-batch, an inotify queue overflow, a disk that fails one fsync, one of serve's
processes killed alone.

Nothing is lost: the dossier waits, is retried with backoff, the sender hears 500 when it takes long,
and everything is delivered once the fault is gone.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from gateway import intake as intake_module
from gateway import samples
from gateway.clock import system_clock
from gateway.folders import Folders, fsync_dir
from gateway.harness import Sandbox, process_tree
from gateway.intake import Intake
from gateway.ledger.store import Ledger

KV, PK = "kv-bau-zh", "pk-bau-zh"


def two_organs(root: Path, database_url: str = "", **settings: object) -> Sandbox:
    root.mkdir()
    settings = {"settle_seconds": 0.1, "rescan_seconds": 1, "listen": "", **settings}
    box = Sandbox(root=root, database_url=database_url, settings=settings)
    box.init_pair(KV, PK)
    return box


def hanging_gpg(folder: Path, switch: Path) -> Path:
    """A `gpg` first on PATH that hangs on signing while ``switch`` exists (and is the real gpg otherwise)."""
    folder.mkdir()
    wrapper = folder / "gpg"
    wrapper.write_text(
        f'#!/bin/sh\nif [ -e "{switch}" ]; then case " $* " in *" --sign "*) exec sleep 3600;; esac; fi\n'
        f'exec {shutil.which("gpg")} "$@"\n'
    )
    wrapper.chmod(0o755)
    return folder


def test_a_hanging_gpg_is_killed_and_retried_and_the_sender_told_until_it_works(short_tmp: Path) -> None:
    switch = short_tmp / "hang"
    box = two_organs(short_tmp / "box", openpgp="gpg", gpg_timeout_seconds=2, retry_max_seconds=1)
    box.env["PATH"] = f"{hanging_gpg(short_tmp / 'bin', switch)}:{os.environ['PATH']}"
    try:
        switch.touch()
        box.start(listen="")
        data = samples.dossier_bytes(samples.make_dossier(KV, PK))
        box.drop(KV, "night.json", data)

        told = box.wait_for(lambda: list(box.folder(KV, "receipts").glob("*_500_*.receipt.json")), 60, "500")
        assert not list(box.folder(PK, "inbox").iterdir()), "nothing delivered while gpg hangs"
        assert "did not finish within 2 s" in box.log.read_text(), "the admin sees why"
        assert box.process.poll() is None, "the gateway stays up"

        switch.unlink()  # gpg behaves again
        [transfer] = box.wait_settled(1, timeout=60)
        assert transfer.state == "delivered" and transfer.attempts >= 3
        assert box.decrypt(PK, box.folder(PK, "inbox") / transfer.delivered_name).data == data
        assert len(told) == 1 and len(list(box.folder(KV, "receipts").glob("*_100_*.receipt.json"))) == 1
        assert not [p for p in (box.data_dir / "spool").rglob("*") if p.is_file()], "no spool or temp left"

        gnupg = box.data_dir / "gnupg"
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], check=True)
        box.drop(KV, "after-agent.json", samples.dossier_bytes(samples.make_dossier(KV, PK)))
        rows = box.wait_settled(2, timeout=60)
        assert [t.state for t in rows] == ["delivered", "delivered"], "gpg starts a new agent by itself"
    finally:
        box.close()


def stage_batch(box: Sandbox, count: int, name: str = "batch") -> None:
    """Write ``count`` control reports beside the outbox, then move them all in at once (a night's export)."""
    staged = box.root / f"staged-{name}"
    staged.mkdir()
    for i in range(count):
        doc = samples.make_dossier(KV, PK, attachments=[("a.pdf", samples.make_pdf(50_000, i))])
        (staged / f"{name}-{i:03d}.json").write_bytes(samples.dossier_bytes(doc))
    for path in sorted(staged.iterdir()):
        path.rename(box.folder(KV, "outbox") / path.name)


def delivered_at_least(box: Sandbox, count: int) -> bool:
    return box.ledger.count_by_state().get("delivered", 0) >= count


def test_a_postgresql_restart_under_load_loses_nothing(short_tmp: Path, pg_url: str) -> None:
    clusters = sorted(Path("/etc/postgresql").glob("*/main"))
    if os.geteuid() != 0 or not clusters or not shutil.which("pg_ctlcluster"):
        pytest.skip("restarting PostgreSQL needs root and pg_ctlcluster (CI has both)")
    box = two_organs(short_tmp / "box", database_url=pg_url)
    try:
        box.start(listen="")
        stage_batch(box, 150)
        box.wait_for(lambda: delivered_at_least(box, 10), 60, "the batch under way")

        restart = ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1].parent.name, "main", "restart"]
        subprocess.run(restart, check=True, capture_output=True, timeout=120)

        rows = box.wait_settled(150, timeout=240)
        assert {t.state for t in rows} == {"delivered"}, "nothing lost, nothing rejected"
        assert len(list(box.folder(PK, "inbox").iterdir())) == 150, "each delivered once"
        assert len(list(box.folder(KV, "receipts").glob("*_100_*.receipt.json"))) == 150
        assert box.process.poll() is None, "the gateway stayed up"
        assert "OperationalError" in box.log.read_text(), "the outage really hit the gateway"
    finally:
        box.close()


def test_a_recipient_key_withdrawn_mid_batch_holds_the_rest_until_a_key_returns(short_tmp: Path) -> None:
    box = two_organs(short_tmp / "box")
    try:
        box.start(listen="")
        stage_batch(box, 60, "early")
        box.wait_for(lambda: delivered_at_least(box, 10), 60, "the batch under way")

        box.cli("organ", "pgp-key", "remove", PK)  # the committee reports its key lost
        stage_batch(box, 60, "late")  # and the rest of the night's export comes in
        box.wait_for(lambda: box.ledger.count_by_state().get("held", 0) >= 60, 60, "the rest held")
        states = box.ledger.count_by_state()
        held = states["held"]
        assert set(states) <= {"received", "validated", "encrypted", "held", "delivered"}, states
        assert box.process.poll() is None

        box.cli("organ", "pgp-key", "import", PK, str(box.root / "keys" / PK / "pgp.asc"))  # a key again
        box.wait_for(lambda: box.ledger.count_by_state().get("held", 0) == 0, 120, "held dossiers retried")
        rows = box.wait_settled(120, timeout=180)
        assert {t.state for t in rows} == {"delivered"}, "nothing rejected, nothing lost"
        assert len(list(box.folder(PK, "inbox").iterdir())) == 120, "each delivered once"
        receipts = box.folder(KV, "receipts")
        assert len(list(receipts.glob("*_601_*.receipt.json"))) >= held, "the sender hears of the hold"
        assert len(list(receipts.glob("*_100_*.receipt.json"))) == 120
    finally:
        box.close()


def test_an_inotify_queue_overflow_loses_nothing(short_tmp: Path) -> None:
    limit = Path("/proc/sys/fs/inotify/max_queued_events")
    box = two_organs(short_tmp / "box")
    try:
        original = limit.read_text()
        limit.write_text("8\n")  # applies to inotify instances created from now on: the gateway's
    except OSError as exc:
        box.close()
        pytest.skip(f"cannot lower the inotify queue here (needs root): {exc}")
    try:
        try:
            box.start(listen="")
        finally:
            limit.write_text(original)
        outbox = box.folder(KV, "outbox")
        staged = box.root / "staged"
        staged.mkdir()
        for i in range(150):
            (staged / f"storm-{i:03d}.json").write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
        for path in sorted(staged.iterdir()):
            path.rename(outbox / path.name)  # far more events than the queue holds

        rows = box.wait_settled(150, timeout=180)
        assert len(rows) == 150 and {t.state for t in rows} == {"delivered"}
        assert len(list(box.folder(PK, "inbox").iterdir())) == 150, "each delivered once"
        assert "queue overflowed" in box.log.read_text(), "the storm really overflowed the queue"
        assert box.process.poll() is None
    finally:
        box.close()


def test_a_spool_folder_that_fails_its_fsync_once_costs_intake_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk hiccups (EIO) as intake makes a batch's renames into the spool durable: the batch is not recorded
    then, since a power cut could still undo the renames, and the next round records it, once; intake goes on."""
    folders, ledger = Folders(tmp_path / "data"), Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    folders.create()
    folders.create_organ(KV)
    intake = Intake(
        ledger, folders, system_clock, settle=0, grace=0, on_received=lambda: None, on_pickup=lambda *_: None
    )
    failures = iter([OSError(errno.EIO, "Input/output error")])

    def hiccup(folder: Path) -> None:
        if (error := next(failures, None)) is not None:
            raise error
        fsync_dir(folder)

    monkeypatch.setattr(intake_module, "fsync_dir", hiccup)
    try:
        (folders.outbox(KV) / "a.json").write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
        assert intake.scan() == 0, "not recorded while the renames may not last"
        assert not list(folders.outbox(KV).iterdir()), "but taken from the outbox into the spool"
        assert intake.recover_spool() == 1 and intake.recover_spool() == 0
        assert [(t.sender_id, t.file_name, t.state) for t in ledger.transfers()] == [(KV, "a.json", "received")]
        (folders.outbox(KV) / "b.json").write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
        assert intake.scan() == 1, "intake goes on"
    finally:
        ledger.close()


@pytest.mark.parametrize("which", ["flam-gateway-worker-0", "flam-gateway-sftp"])
def test_a_worker_or_the_door_killed_alone_stops_the_gateway_for_its_supervisor_and_loses_nothing(
    short_tmp: Path, which: str
) -> None:
    """The OOM killer takes one of serve's processes: serve must not go on without it, looking alive (no
    deliveries, or no SFTP); it stops with an error, and the next start delivers what waited."""
    box = two_organs(short_tmp / "box")
    try:
        box.start(listen="127.0.0.1:0")
        os.kill(box.process.pid, signal.SIGHUP)  # a log rotation's habit: ignored, said so
        box.wait_for(lambda: "SIGHUP ignored" in box.log.read_text(), 10, "the SIGHUP noted")
        names = {Path(f"/proc/{pid}/comm").read_text().strip(): pid for pid in process_tree(box.process.pid)[1:]}
        assert box.process.poll() is None and {"flam-sftp", "flam-worker-0"} <= set(names), names  # one per core
        os.kill(names[which.replace("flam-gateway-", "flam-")], signal.SIGKILL)
        assert box.process.wait(timeout=30) == 2
        said = box.log.read_text()
        assert f"error CHILD_ENDED: {which} ended unexpectedly (killed by SIGKILL, code -9)" in said, said
        box.wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in names.values()), 10, "all gone")

        box.drop(KV, "after.json", samples.dossier_bytes(samples.make_dossier(KV, PK)))
        box.start(listen="127.0.0.1:0")
        assert box.wait_transfer("after.json", "delivered").state == "delivered"
    finally:
        box.close()
