"""Power cuts: an upload the client was told is stored survives one, and a batch survives many, each dossier
delivered exactly once or rejected with one receipt.

The data dir is a small ext4 image of the test's own, loop-mounted (as root); gateway.powercut says how the power
is cut and the machine rebooted. Where a loop mount is impossible the tests are skipped with the reason; CI runs
as root, so they run there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import samples
from gateway.chaos import run_chaos
from gateway.harness import Sandbox, openssh_sftp
from gateway.ledger.store import Ledger
from gateway.powercut import Ext4Image, power_cut

KV, PK = "kv-bau-zh", "pk-bau-zh"


@pytest.fixture
def disk(short_tmp: Path) -> Iterator[Ext4Image]:
    """A fresh ext4 image with a journal, mounted on ``short_tmp / "data"`` (a Sandbox's data dir there)."""
    with mounted(Ext4Image(short_tmp / "disk.img", short_tmp / "data", size=128 << 20)) as image:
        yield image


@contextlib.contextmanager
def mounted(image: Ext4Image) -> Iterator[Ext4Image]:
    """``image`` made and mounted for the block (the test is skipped where that needs a root it lacks)."""
    try:
        image.create()
    except OSError as exc:
        pytest.skip(f"cannot make and loop-mount an ext4 image here (needs root): {exc}")
    try:
        yield image
    finally:
        image.close()


@pytest.mark.parametrize("journal", [True, False], ids=["with a journal", "without a journal"])
def test_a_data_dir_that_a_power_cut_could_undo_is_named_at_init_and_at_every_start(
    short_tmp: Path, journal: bool
) -> None:
    with mounted(Ext4Image(short_tmp / "disk.img", short_tmp / "data", size=64 << 20, journal=journal)):
        box = Sandbox(root=short_tmp, settings={"listen": ""})
        try:
            init = box.cli("init")
            assert ("without a journal" in init.stderr) is not journal, init.stderr
            box.start(listen="")
            box.stop()
            assert ("data dir at risk" in box.log.read_text()) is not journal
        finally:
            box.close()


# Records dossiers as a worker does (arrival, claim, the step that ends it), says so, and waits for the power cut.
_RECORDER = """
import sys
from datetime import UTC, datetime, timedelta
from gateway.folders import new_transfer_id
from gateway.ledger.models import TransferData
from gateway.ledger.store import Ledger
from gateway.lifecycle import State

ledger, now = Ledger(sys.argv[1]), datetime.now(UTC)
for n in range(int(sys.argv[2])):
    transfer = TransferData.arrival(new_transfer_id(), "kv-bau-zh", f"{n}.json", now)
    ledger.receive([transfer])
    ledger.claim("node-a:0", now, timedelta(minutes=5))
    ledger.transition(transfer.id, State.RECEIVED, State.REJECTED, now, release=True)
print("recorded", flush=True)
sys.stdin.read()
"""


def test_what_the_sqlite_ledger_recorded_survives_a_power_cut_the_moment_after(disk: Ext4Image) -> None:
    # Every commit but a claim's is on disk before the ledger returns (its log synced after the writer lock is let
    # go: SqliteWriter.sync_log), and the worker moves files on only then. With synchronous=NORMAL and no such sync,
    # as the ledger ran until the eighth session, the last steps are gone here.
    url = f"sqlite:///{disk.folder / 'ledger.sqlite3'}"
    command = [sys.executable, "-c", _RECORDER, url, "20"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as recorder:
        assert recorder.stdout is not None and recorder.stdout.readline() == "recorded\n"
        disk.cut_power()  # the recorder, which still holds the ledger open, dies with the power
    disk.mount()
    ledger = Ledger(url)
    try:
        assert Counter(t.state for t in ledger.transfers()) == {"rejected": 20}
    finally:
        ledger.close()


def test_an_upload_the_client_was_told_is_stored_survives_a_power_cut(disk: Ext4Image, tmp_path: Path) -> None:
    box = Sandbox(root=disk.folder.parent, settings={"settle_seconds": 0.2, "rescan_seconds": 1})
    try:
        box.init_pair(KV, PK)
        port = box.start()
        assert port is not None
        sent = {}
        for name in ("direct.json", "renamed.json"):
            doc = samples.make_dossier(KV, PK, attachments=[("bericht.pdf", samples.make_pdf(20_000))])
            sent[name] = samples.dossier_bytes(doc)
            (tmp_path / name).write_bytes(sent[name])
        # larger than the door's background flushes (every 32 MiB): the last part is on disk by the close's fsync
        scan = samples.make_pdf(36 << 20)
        package = samples.write_package(
            tmp_path / "large.zip",
            samples.make_dossier(KV, PK, attachments=[("scan.pdf", scan)], embed=False),
            {"scan.pdf": scan},
        )
        sent[package.name] = package.read_bytes()

        # The power goes the moment the client has its answers, before anything else touches the disk: the
        # gateway's watcher is held still so that its own fsyncs cannot make the uploads durable by the way.
        os.kill(box.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        done = openssh_sftp(
            port,
            KV,
            box.organs[KV].ssh_key,
            f"cd /outbox\nput {tmp_path / 'direct.json'}\nput {package}\n"
            f"put {tmp_path / 'renamed.json'} renamed.filepart\nrename renamed.filepart renamed.json\n",
        )
        assert done.returncode == 0, done.stderr
        power_cut(disk, box)  # and the reboot

        assert sorted(p.name for p in box.folder(KV, "outbox").iterdir()) == [
            "direct.json",
            "large.zip",
            "renamed.json",
        ]
        box.start()
        rows = box.wait_settled(3, timeout=60)
        assert sorted((t.file_name, t.state) for t in rows) == [
            ("direct.json", "delivered"),
            ("large.zip", "delivered"),
            ("renamed.json", "delivered"),
        ]
        for t in rows:
            assert box.decrypt(PK, box.folder(PK, "inbox") / t.delivered_name).data == sent[t.file_name]
    finally:
        box.close()


def test_a_dossier_a_local_program_dropped_is_intact_after_a_power_cut_once_the_gateway_recorded_it(
    disk: Ext4Image,
) -> None:
    # No workers at first: they would take the dossier on at once. A local program writes and closes its file
    # and never fsyncs it (the usual export); from the moment the ledger records it, the gateway answers for it.
    settings = {"settle_seconds": 0.2, "rescan_seconds": 1, "listen": "", "workers": 0}
    box = Sandbox(root=disk.folder.parent, settings=settings)
    try:
        box.init_pair(KV, PK)
        box.start(listen="")
        doc = samples.make_dossier(KV, PK, attachments=[("bericht.pdf", samples.make_pdf(20_000))])
        sent = samples.dossier_bytes(doc)
        (box.folder(KV, "outbox") / "local.json").write_bytes(sent)
        box.wait_for(lambda: box.transfers(), 30, "local.json recorded")
        assert "deliveries paused (workers = 0)" in box.log.read_text(), "serve says that it delivers nothing"
        power_cut(disk, box)  # and the reboot, now with workers

        box.env["FLAM_GATEWAY_WORKERS"] = "4"
        box.start(listen="")
        [transfer] = box.wait_settled(1, timeout=60)
        assert (transfer.file_name, transfer.state) == ("local.json", "delivered"), transfer.status_code
        assert box.decrypt(PK, box.folder(PK, "inbox") / transfer.delivered_name).data == sent
    finally:
        box.close()


def test_power_cuts_during_a_batch_lose_nothing_and_deliver_nothing_twice(disk: Ext4Image) -> None:
    # ``disk`` only proves that images can be mounted here; the run makes its own. With the ledger's SQLite at
    # synchronous=NORMAL, such a run (2,000 dossiers, 10 cuts) left dossiers retrying for ever: a power cut rolled
    # the ledger back to steps whose spool files had already been wiped.
    report = run_chaos(count=600, crashes=6, seed=5, log=lambda _: None, power_cuts=True)
    assert report.problems == []
    assert (report.delivered, report.rejected) == (540, 60)
