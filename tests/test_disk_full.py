"""Disk full (ENOSPC) on the data dir: nothing is lost, dossiers wait and go on when space returns.

The test mounts its own small tmpfs (as root). Where mounting is impossible it is skipped with the reason;
CI runs as root, so it runs there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import samples
from gateway.harness import Sandbox, openssh_sftp

KV, PK = "kv-bau-zh", "pk-bau-zh"


@contextlib.contextmanager
def tmpfs_data_dir(root: Path, options: str) -> Iterator[Path]:
    """``root`` whose ``data`` folder is a tmpfs mounted with ``options`` for the test's life."""
    data = root / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(data)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield root
    subprocess.run(["umount", "-l", str(data)], check=False)


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    with tmpfs_data_dir(short_tmp, "size=48m") as root:
        yield root


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` until only about ``leave`` bytes are free."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while (free := os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize) > leave:
            try:
                fh.write(chunk[: max(4096, min(len(chunk), free - leave))])
                fh.flush()
            except OSError:
                break
    return filler


def test_a_full_disk_delays_dossiers_and_loses_nothing(small_disk: Path) -> None:
    settings = {"settle_seconds": 0.1, "rescan_seconds": 1, "listen": "", "retry_max_seconds": 1}
    box = Sandbox(root=small_disk, settings={**settings, "max_message_bytes": 3_000_000})  # twice that: room needed
    try:
        box.init_pair(KV, PK)
        sent = {}
        for i in range(3):
            doc = samples.make_dossier(KV, PK, attachments=[("big.pdf", samples.make_pdf(1_000_000, seed=i))])
            sent[f"big-{i}.json"] = samples.dossier_bytes(doc)
            box.drop(KV, f"big-{i}.json", sent[f"big-{i}.json"])
        filler = fill(box.data_dir, leave=600_000)
        box.start(listen="")

        box.wait_for(lambda: any("No space" in (t.last_error or "") for t in box.transfers()), 60, "ENOSPC seen")
        assert not list(box.folder(PK, "inbox").iterdir()), "nothing half-delivered"
        assert box.process.poll() is None, "the gateway stays up"
        done = box.cli("status", "--min-free-mib", "1", check=False)  # what the admin's monitoring runs
        short = r"short of space: the data dir's filesystem has 0\.\d MiB free of 48\.0 MiB, less than 1\.0 MiB"
        assert done.returncode == 1 and re.search(short, done.stderr), done.stderr
        box.wait_for(lambda: "short of space: the data dir's filesystem has 0." in box.log.read_text(), what="its log")

        filler.unlink()  # space returns
        rows = box.wait_settled(3, timeout=120)
        assert {t.state for t in rows} == {"delivered"}
        for t in rows:
            assert box.decrypt(PK, box.folder(PK, "inbox") / t.delivered_name).data == sent[t.file_name]
            assert list(box.folder(KV, "receipts").glob(f"*_100_{t.id}.receipt.json"))
        assert not [p for p in (box.data_dir / "spool").rglob("*") if p.is_file()], "no spool or temp left"
        assert "No space left on device" in box.log.read_text(), "the admin is told"
        assert "short of space" not in box.cli("status").stderr
        box.wait_for(lambda: "the data dir's filesystem has room again" in box.log.read_text(), what="room again")
    finally:
        box.close()


def test_the_admin_hears_that_the_inodes_run_short_before_they_run_out(short_tmp: Path) -> None:
    with tmpfs_data_dir(short_tmp, "size=48m,nr_inodes=500") as root:
        box = Sandbox(root=root, settings={"listen": "", "max_message_bytes": 1_000_000})
        try:
            box.init_pair(KV, PK)
            assert box.cli("status").returncode == 0, "room for the largest dossier twice, and inodes"
            spent = box.data_dir / "quarantine" / "spent"
            spent.mkdir()
            while os.statvfs(box.data_dir).f_favail >= 5:  # 1 % of 500: rejected originals piling up, never purged
                (spent / f"{os.statvfs(box.data_dir).f_favail}.json").touch()
            done = box.cli("status", "--json", check=False)
            report = json.loads(done.stdout)
            assert done.returncode == 1 and report["data_dir_space"]["total_inodes"] == 500
            assert report["short_of_space"] == [
                f"the data dir's filesystem has {report['data_dir_space']['free_inodes']} of 500 inodes free, less "
                "than 1 %: every upload, delivery and receipt needs one"
            ]
        finally:
            box.close()


def test_an_upload_that_meets_a_full_disk_fails_and_leaves_nothing(small_disk: Path, tmp_path: Path) -> None:
    box = Sandbox(root=small_disk, settings={"settle_seconds": 0.1, "rescan_seconds": 1})
    try:
        box.init_pair(KV, PK)
        port = box.start()
        assert port is not None
        local = tmp_path / "full.json"
        local.write_bytes(
            samples.dossier_bytes(samples.make_dossier(KV, PK, attachments=[("a.pdf", samples.make_pdf(2_000_000))]))
        )
        put = f"cd /outbox\nput {local}\n"

        filler = fill(box.data_dir, leave=500_000)
        done = openssh_sftp(port, KV, box.organs[KV].ssh_key, put)
        assert done.returncode != 0, "the client is told the upload failed"
        time.sleep(1.5)  # longer than the settle and rescan times: a stored partial file would be taken by now
        assert not list(box.folder(KV, "outbox").iterdir()), "neither a partial file nor its hidden upload file"
        assert box.process.poll() is None, "the gateway stays up"

        filler.unlink()  # space returns: the same upload goes through
        done = openssh_sftp(port, KV, box.organs[KV].ssh_key, put)
        assert done.returncode == 0, done.stderr
        transfer = box.wait_transfer("full.json", "delivered")
        assert box.decrypt(PK, box.folder(PK, "inbox") / transfer.delivered_name).data == local.read_bytes()
        time.sleep(2.5)  # two maintenance rounds: a partial file kept anywhere (the spool too) would be recorded
        assert [(t.file_name, t.state) for t in box.transfers()] == [("full.json", "delivered")]
        actions = [e["action"] for e in json.loads(box.cli("audit", "list", "--organ", KV, "--json").stdout)]
        assert "upload_failed" in actions and "upload" in actions
    finally:
        box.close()
