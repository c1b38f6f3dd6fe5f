"""Power cuts for tests and chaos runs: a data dir on an ext4 image of its own, and the cut itself.

The image is loop-mounted (root only). The power is cut with the filesystem shutdown ioctl that xfstests uses for
the same purpose (FS_IOC_SHUTDOWN without flushing the journal): from that moment nothing more reaches the image,
and what the kernel held in memory for it is gone, as in a power cut. Every process still using the filesystem
is then killed, as the power cut would have killed it, and the image is unmounted. Mounting it again replays its
journal, as a reboot would.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
from pathlib import Path

from gateway.harness import Sandbox, wait_until

_FS_IOC_SHUTDOWN, _NOLOGFLUSH = 0x8004587D, 2  # _IOR('X', 125, __u32); FS_SHUTDOWN_FLAGS_NOLOGFLUSH


class Ext4Image:
    """An ext4 image file (with a journal, as mkfs makes it, unless ``journal`` is False) mounted on ``folder``
    through a loop device."""

    def __init__(self, image: Path, folder: Path, size: int = 256 << 20, *, journal: bool = True) -> None:
        self.image, self.folder, self.size, self.journal = Path(image), Path(folder), size, journal

    def create(self) -> None:
        """Make the image and mount it; raises OSError with the reason where that is impossible (not root)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as fh:
            fh.truncate(self.size)
        _run("mkfs.ext4", "-q", "-F", *([] if self.journal else ["-O", "^has_journal"]), str(self.image))
        self.mount()

    def mount(self) -> None:
        """Mount the image on its folder: after a power cut, this is the reboot."""
        _run("mount", "-o", "loop", str(self.image), str(self.folder))

    def cut_power(self) -> None:
        """Stop the filesystem dead, kill every process that still uses it (but this one), and unmount it."""
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, _FS_IOC_SHUTDOWN, struct.pack("I", _NOLOGFLUSH))
        finally:
            os.close(fd)

        def unmounted() -> bool:
            for pid in self._users():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return subprocess.run(["umount", str(self.folder)], capture_output=True).returncode == 0

        wait_until(unmounted, 30, f"{self.folder} unmounted")

    def close(self) -> None:
        """Unmount, lazily if something still holds it."""
        subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)

    def _users(self) -> set[int]:
        """Other processes with a file or their working folder on the image, or naming it (a gpg-agent's home)."""
        folder, found = str(self.folder), set()
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if not proc.name.isdigit() or int(proc.name) == os.getpid():
                    continue
                places = [os.readlink(proc / "cwd"), *(os.readlink(fd) for fd in (proc / "fd").iterdir())]
                command = (proc / "cmdline").read_bytes().decode(errors="replace")
                if folder in command or any(p == folder or p.startswith(f"{folder}/") for p in places):
                    found.add(int(proc.name))
        return found


def power_cut(image: Ext4Image, box: Sandbox) -> None:
    """The power goes under ``box``'s data dir (on ``image``), and the machine reboots: this process lets go of
    the ledger, the filesystem stops dead, `serve` and all else on it is killed, and the image is mounted again."""
    box.close_ledger()
    image.cut_power()
    box.stop(signal.SIGKILL)
    image.mount()


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command[:2])}: {done.stderr.strip() or done.returncode}")
