"""The SFTP door's files made ahead of uploads (gateway.sftp.spares), on a real filesystem with its real thread."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from gateway.harness import wait_until
from gateway.sftp.spares import SparePool


def test_an_upload_takes_a_ready_empty_file_under_its_own_name_and_the_pool_refills(tmp_path: Path) -> None:
    spares, outbox = tmp_path / "spare", tmp_path / "outbox"
    outbox.mkdir()
    pool = SparePool(spares, size=4)
    pool.start()
    try:
        wait_until(lambda: len(list(spares.iterdir())) == 4)
        made_ahead = {p.stat().st_ino for p in spares.iterdir()}
        fd = pool.take(outbox / ".sftp-1.upload")
        os.write(fd, b"dossier")
        os.close(fd)
        upload = outbox / ".sftp-1.upload"
        assert upload.read_bytes() == b"dossier"
        assert upload.stat().st_ino in made_ahead, "a ready file, not a new one"
        assert stat.S_IMODE(upload.stat().st_mode) == 0o640 & ~_umask()
        wait_until(lambda: len(list(spares.iterdir())) == 4)
    finally:
        pool.close()
    assert not list(spares.iterdir()), "closing removes what is left"


def test_an_upload_never_waits_for_the_pool_nor_fails_when_a_spare_vanished(tmp_path: Path) -> None:
    spares, outbox = tmp_path / "spare", tmp_path / "outbox"
    outbox.mkdir()
    pool = SparePool(spares, size=1)
    not_started = pool.take(outbox / ".sftp-a.upload")  # nothing ready yet: made on the spot
    os.close(not_started)
    pool.start()
    try:
        wait_until(lambda: pool.ready == 1)  # not the folder: a spare's file is there before the pool holds it
        for spare in spares.iterdir():
            spare.unlink()  # an admin's cleanup, say
        fd = pool.take(outbox / ".sftp-b.upload")
        os.close(fd)
        assert sorted(p.name for p in outbox.iterdir()) == [".sftp-a.upload", ".sftp-b.upload"]

        wait_until(lambda: pool.ready == 1)
        ready = list(spares.iterdir())
        with tempfile.TemporaryDirectory(dir="/dev/shm") as mounted:  # an outbox on another filesystem (tmpfs)
            os.close(pool.take(Path(mounted, ".sftp-c.upload")))
            assert Path(mounted, ".sftp-c.upload").exists()
        assert ready[0].exists(), "the spare could not move there and stays ready"
    finally:
        pool.close()


def test_spares_a_killed_door_left_are_removed_when_the_next_one_starts(tmp_path: Path) -> None:
    spares = tmp_path / "spare"
    spares.mkdir()
    (spares / "left-by-a-killed-door").touch()
    pool = SparePool(spares, size=2)
    pool.start()
    try:
        wait_until(lambda: len(list(spares.iterdir())) == 2)
        assert not (spares / "left-by-a-killed-door").exists()
    finally:
        pool.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
