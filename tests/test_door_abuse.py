"""An organ's own key used against the door (by a careless client, or by whoever stole the key): it cannot grow the
door without bound, slip past its quota, stall the intake for everyone, or leave files outside its quota. Each
case was found by a review that ran it against the real door; before the fix, each did what its comment says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import paramiko
import pytest
from paramiko.sftp import CMD_OPENDIR, CMD_READ, int64

from gateway import harness
from gateway.harness import Sandbox

KV, PK = "kv-bau-zh", "pk-bau-zh"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox(settings={"idle_timeout_seconds": 4})  # the door's idle round every second
    sandbox.init_pair(KV, PK)
    sandbox.start()
    yield sandbox
    sandbox.close()


@contextlib.contextmanager
def session(box: Sandbox, organ: str = KV) -> Iterator[paramiko.SFTPClient]:
    transport = paramiko.Transport(("127.0.0.1", box.port))
    transport.connect(username=organ, pkey=paramiko.Ed25519Key.from_private_key_file(str(box.organs[organ].ssh_key)))
    try:
        yield paramiko.SFTPClient.from_transport(transport)
    finally:
        transport.close()


def door_rss_mib(box: Sandbox) -> float:
    assert box.process is not None
    [door] = [
        p for p in harness.process_tree(box.process.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "flam-sftp"
    ]
    status = Path(f"/proc/{door}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def hidden_uploads(box: Sandbox) -> list[str]:
    return [p.name for p in box.folder(KV, "outbox").iterdir() if p.name.startswith(".sftp-")]


def test_a_client_that_asks_for_reads_without_taking_the_answers_does_not_grow_the_door(box: Sandbox) -> None:
    data = os.urandom(16 << 20)
    box.drop(KV, "big.part", data)  # a partial upload's name: never collected, and the organ may read it
    before = door_rss_mib(box)
    with session(box) as flood:
        handle = flood.open("/outbox/big.part", "rb")
        flood.sock.settimeout(5)  # once the door reads no more requests, its window fills and sending blocks
        with contextlib.suppress(TimeoutError):
            for _ in range(2000):  # 120 of 16 MiB grew the door by 2 GB: asyncssh answered each at once, sent or not
                flood._async_request(handle, CMD_READ, handle.handle, int64(0), 16 << 20)
        time.sleep(2)
        assert door_rss_mib(box) - before < 64  # 2,000 answers of 256 KiB would be 500 MiB
    assert asyncio.run(flood_through_a_wide_window(box, 2000)) - before < 64  # 560 MiB went to the connection
    with session(box) as fair, fair.open("/outbox/big.part", "rb") as fh:  # short reads (256 KiB), as OpenSSH's
        assert fh.read() == data
    (box.folder(KV, "outbox") / "big.part").unlink()


async def flood_through_a_wide_window(box: Sandbox, reads: int) -> float:
    """A client that grants the door a window of 2 GiB, stops reading its socket, and asks for ``reads`` reads of
    big.part, in SFTP packets of its own making; the door's RSS (MiB) after, with the connection open."""

    def packet(kind: int, *parts: bytes) -> bytes:
        return struct.pack(">IB", 1 + sum(map(len, parts)), kind) + b"".join(parts)

    def text(value: bytes) -> bytes:
        return struct.pack(">I", len(value)) + value

    class Answers(asyncssh.SSHClientSession):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.data, self.more = b"", asyncio.Event()

        def data_received(self, data: bytes, datatype: object) -> None:
            self.data += data
            self.more.set()

        async def next(self) -> bytes:
            """The next whole packet the door sent: its type, then the rest."""
            while len(self.data) < 4 or len(self.data) < 4 + struct.unpack(">I", self.data[:4])[0]:
                self.more.clear()
                await asyncio.wait_for(self.more.wait(), 10)
            size = struct.unpack(">I", self.data[:4])[0]
            whole, self.data = self.data[4 : 4 + size], self.data[4 + size :]
            return whole

    key = asyncssh.read_private_key(str(box.organs[KV].ssh_key))
    async with asyncssh.connect("127.0.0.1", box.port, username=KV, client_keys=[key], known_hosts=None) as conn:
        chan, answers = await conn.create_session(Answers, subsystem="sftp", encoding=None, window=2**31)
        chan.write(packet(1, struct.pack(">I", 3)))  # INIT
        assert (await answers.next())[0] == 2  # VERSION
        chan.write(packet(3, struct.pack(">I", 1), text(b"/outbox/big.part"), struct.pack(">II", 1, 0)))  # OPEN
        opened = await answers.next()
        assert opened[:5] == b"\x66" + struct.pack(">I", 1), opened  # HANDLE, to request 1
        handle = opened[9 : 9 + struct.unpack(">I", opened[5:9])[0]]
        conn._transport.pause_reading()  # type: ignore[attr-defined]
        for n in range(reads):
            chan.write(packet(5, struct.pack(">I", 100 + n), text(handle), struct.pack(">QI", 0, 256 << 10)))  # READ
            if n % 100 == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2)
        return door_rss_mib(box)


def test_an_upload_cannot_be_read_back_nor_copied_onto_itself(box: Sandbox) -> None:
    with session(box) as client, client.open("/outbox/credit.part", "w+") as fh:
        fh.write(b"x" * 65536)
        fh.flush()
        fh.seek(0)
        with pytest.raises(PermissionError):  # what a handle read was taken off the quota's bytes under way
            fh.read(65536)

    async def copy_onto_itself() -> None:  # copy-data froze the door: its loop reads and writes without a pause
        key = asyncssh.read_private_key(str(box.organs[KV].ssh_key))
        async with (
            asyncssh.connect("127.0.0.1", box.port, username=KV, client_keys=[key], known_hosts=None) as conn,
            conn.start_sftp_client() as sftp,
            sftp.open("/outbox/loop.part", "wb+") as fh,
        ):
            await fh.write(b"y" * 65536)
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.remote_copy(fh, fh, src_offset=0, src_length=0, dst_offset=65536)

    asyncio.run(copy_onto_itself())
    for name in ("credit.part", "loop.part"):
        (box.folder(KV, "outbox") / name).unlink(missing_ok=True)


def test_an_organ_cannot_hold_more_files_open_than_its_limit(box: Sandbox) -> None:
    box.drop(KV, "held.part", b"z")
    with session(box) as greedy:  # one session opened 19,940 and the door took no login after
        handles = [greedy.open("/outbox/held.part", "rb") for _ in range(128)]
        for _ in range(128):  # listings opened and never read (300,000 of them passed the first count)
            greedy._request(CMD_OPENDIR, "/inbox")
        with pytest.raises(OSError, match="256 files and listings open"):
            greedy.open("/outbox/held.part", "rb")
        with pytest.raises(OSError, match="256 files and listings open"):
            greedy._request(CMD_OPENDIR, "/inbox")
        with session(box, PK) as other:  # another organ is let in and served
            assert other.listdir("/inbox") == []
        handles.pop().close()
        greedy.open("/outbox/held.part", "rb").close()
    (box.folder(KV, "outbox") / "held.part").unlink()


def test_a_name_the_filesystem_cannot_hold_is_refused_and_leaves_nothing(box: Sandbox) -> None:
    with session(box) as client:
        for _ in range(3):  # each left a hidden 8 MiB file outside the quota, and 4 MB names filled the trail
            with pytest.raises(OSError, match="at most 255 bytes"), client.open("/outbox/" + "n" * 256 + ".json", "w"):
                pass
        with pytest.raises(OSError, match="at most 4096"):
            client.stat("/outbox/" + "./" * 3000)
    assert hidden_uploads(box) == []


def test_a_write_that_would_leave_a_gap_is_refused(box: Sandbox) -> None:
    with session(box) as client:
        fh = client.open("/outbox/sparse.json", "w")
        fh.write(b"{")
        fh.seek((16 << 30) - 4096)  # one byte at 16 GiB: a sparse file the intake took a minute to hash
        with pytest.raises(OSError, match="would leave a gap"):
            fh.write(b"}")
            fh.flush()
        fh.close()  # refused too ("not stored"), which paramiko does not pass on
    assert not (box.folder(KV, "outbox") / "sparse.json").exists() and hidden_uploads(box) == []


def test_a_long_upload_is_not_cut_as_idle(box: Sandbox) -> None:
    with session(box) as client, client.open("/outbox/slow.part", "w") as fh:
        for _ in range(14):  # 7 s of writes, no other request, with idle_timeout_seconds 4: it was cut
            fh.write(b"s" * 1000)
            fh.flush()
            time.sleep(0.5)
    assert (box.folder(KV, "outbox") / "slow.part").stat().st_size == 14_000
    (box.folder(KV, "outbox") / "slow.part").unlink()


def test_sessions_on_one_connection_are_capped_hold_no_environment_and_are_refused_with_one_event(
    box: Sandbox,
) -> None:
    with session(box) as first:  # OpenSSH's sshd allows 10 (MaxSessions); the door allowed any number
        transport = first.get_channel().get_transport()
        more = [paramiko.SFTPClient.from_transport(transport) for _ in range(8)]
        bare = transport.open_session()  # a channel that never asks for SFTP counts too (20,000 held 96 MiB)
        before = door_rss_mib(box)
        for n in range(1000):  # asyncssh kept every variable: these held 125 MiB
            bare.set_environment_variable(f"V{n}", "e" * (128 << 10))
        transport.global_request("done@flam-gateway.test", wait=True)  # answered once the door has read them all
        assert door_rss_mib(box) - before < 64
        with pytest.raises(paramiko.ChannelException):
            paramiko.SFTPClient.from_transport(transport)
        for _ in range(50):  # each was an audit event: 3,000 in half a second
            with pytest.raises(paramiko.ChannelException):
                transport.open_session()
        assert all(m.listdir("/") == ["outbox", "inbox", "receipts"] for m in [first, *more])
        bare.close()

        def eleventh() -> list[str] | None:
            with contextlib.suppress(paramiko.ChannelException):
                return paramiko.SFTPClient.from_transport(transport).listdir("/")
            return None

        assert harness.wait_until(eleventh, what="a place freed by the channel closed")

    def refusals() -> list[str] | None:
        details = [e["detail"] for e in json.loads(box.cli("audit", "list", "--action", "refused", "--json").stdout)]
        beyond = [d for d in details if d.startswith("SFTP sessions beyond 10 on one connection")]
        return beyond if len(beyond) == 2 else None

    first, total = box.wait_for(refusals, 10, "the refusals")  # two events, not one per refusal
    assert first == "SFTP sessions beyond 10 on one connection"
    assert int(total.rsplit("(", 1)[1].split()[0]) >= 51  # and one more if the wait above was refused once


def test_df_shows_an_organ_its_own_quota_and_what_is_left_of_it_not_the_shared_disk(box: Sandbox) -> None:
    box.cli("organ", "quota", KV, "1GiB")
    box.drop(KV, "waiting.part", os.urandom(1 << 20))  # counted: what the organ has waiting at the gateway

    def df() -> list[str] | None:  # OpenSSH's `df` (statvfs@openssh.com), in KiB: Size Used Avail (root) %Capacity
        done = harness.openssh_sftp(box.port, KV, box.organs[KV].ssh_key, "df /outbox\n")
        sizes = done.stdout.splitlines()[-1].split()
        return sizes if sizes[:3] == ["1048576", "1024", "1047552"] else None

    assert box.wait_for(df, 20, "df to show the organ's quota")  # it showed the disk all organs share
    box.cli("organ", "quota", KV, "default")
    (box.folder(KV, "outbox") / "waiting.part").unlink()


def test_the_door_runs_no_shell_no_command_and_no_scp_of_the_old_protocol(box: Sandbox, tmp_path: Path) -> None:
    with session(box) as client:
        transport = client.get_channel().get_transport()
        for ask in (lambda ch: ch.exec_command("cat /etc/passwd"), lambda ch: ch.invoke_shell()):
            channel = transport.open_session()
            with pytest.raises(paramiko.SSHException):
                ask(channel)
            channel.close()
    (report := tmp_path / "report.json").write_bytes(b"{}")
    scp = ["scp", "-O", *harness.ssh_options(box.organs[KV].ssh_key), "-P", str(box.port)]  # -O: its own protocol
    old = subprocess.run([*scp, str(report), f"{KV}@127.0.0.1:/outbox/"], capture_output=True, text=True, timeout=60)
    assert old.returncode != 0 and not (box.folder(KV, "outbox") / "report.json").exists()
