"""A power cut just after the SFTP door said "ok": the upload is still there after the reboot, and is delivered once.

The data dir is a small ext4 image of the test's own, mounted through a loop device (as root). The power is cut
with the filesystem shutdown ioctl that xfstests uses for the same purpose (FS_IOC_SHUTDOWN without flushing the
journal): from that moment nothing more reaches the disk, and what the kernel held in memory is gone, as in a power
cut. Unmounting and mounting the image again replays its journal, as a reboot would. Where a loop mount is
impossible the test is skipped with the reason; CI runs as root, so it runs there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import samples
from gateway.harness import Sandbox, openssh_sftp, wait_until

KV, PK = "kv-bau-zh", "pk-bau-zh"
_FS_IOC_SHUTDOWN, _NOLOGFLUSH = 0x8004587D, 2  # _IOR('X', 125, __u32); FS_SHUTDOWN_FLAGS_NOLOGFLUSH


@pytest.fixture
def ext4_image(short_tmp: Path) -> Iterator[Path]:
    """``short_tmp``, whose ``data`` folder is a freshly made, loop-mounted ext4 with a journal."""
    image, data = short_tmp / "disk.img", short_tmp / "data"
    data.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(128 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and mount(image, data).returncode == 0
    if not mounted:
        pytest.skip(f"cannot make and loop-mount an ext4 image here (needs root): {made.stderr.strip()}")
    yield short_tmp
    subprocess.run(["umount", "-l", str(data)], capture_output=True)


def mount(image: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", "-o", "loop", str(image), str(folder)], capture_output=True, text=True)


def cut_power(folder: Path) -> None:
    """Stop the filesystem of ``folder`` dead: nothing written after this reaches its disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, _FS_IOC_SHUTDOWN, struct.pack("I", _NOLOGFLUSH))
    finally:
        os.close(fd)


def users_of(folder: Path) -> set[int]:
    """Other processes with a file or their working folder in ``folder``, or naming it (a gpg-agent's --homedir)."""
    found = set()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            places = [os.readlink(proc / "cwd"), *(os.readlink(fd) for fd in (proc / "fd").iterdir())]
            command = (proc / "cmdline").read_bytes().decode(errors="replace")
            if str(folder) in command or any(p == str(folder) or p.startswith(f"{folder}/") for p in places):
                found.add(int(proc.name))
    return found


def unmount_after_killing_its_users(folder: Path) -> None:
    """SIGKILL every process that still uses ``folder``'s filesystem, as the power cut would have, then unmount."""

    def unmounted() -> bool:
        for pid in users_of(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0

    wait_until(unmounted, 30, f"{folder} unmounted")


def test_an_upload_the_client_was_told_is_stored_survives_a_power_cut(ext4_image: Path, tmp_path: Path) -> None:
    box = Sandbox(root=ext4_image, settings={"settle_seconds": 0.2, "rescan_seconds": 1})
    try:
        box.cli("init")
        box.add_organ(KV, "control_body")
        box.add_organ(PK, "joint_committee")
        box.allow(KV, PK)
        port = box.start()
        assert port is not None
        sent = {}
        for name in ("direct.json", "renamed.json"):
            doc = samples.make_dossier(KV, PK, attachments=[("bericht.pdf", samples.make_pdf(20_000))])
            sent[name] = samples.dossier_bytes(doc)
            (tmp_path / name).write_bytes(sent[name])

        # The power goes the moment the client has its answers, before anything else touches the disk: the
        # gateway's watcher is held still so that its own fsyncs cannot make the uploads durable by the way.
        os.kill(box.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        done = openssh_sftp(
            port,
            KV,
            box.organs[KV].ssh_key,
            f"cd /outbox\nput {tmp_path / 'direct.json'}\n"
            f"put {tmp_path / 'renamed.json'} renamed.filepart\nrename renamed.filepart renamed.json\n",
        )
        assert done.returncode == 0, done.stderr
        cut_power(box.data_dir)
        box.stop(signal.SIGKILL)
        unmount_after_killing_its_users(box.data_dir)

        assert mount(ext4_image / "disk.img", box.data_dir).returncode == 0  # the reboot
        assert sorted(p.name for p in box.folder(KV, "outbox").iterdir()) == ["direct.json", "renamed.json"]
        box.start()
        rows = box.wait_settled(2, timeout=60)
        assert sorted((t.file_name, t.state) for t in rows) == [
            ("direct.json", "delivered"),
            ("renamed.json", "delivered"),
        ]
        for t in rows:
            assert box.decrypt(PK, box.folder(PK, "inbox") / t.delivered_name).data == sent[t.file_name]
    finally:
        box.close()
