"""Organs over SFTP: the real server on 127.0.0.1 (port 0), the OpenSSH client in batch mode and paramiko."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from gateway import harness, samples
from gateway.harness import Sandbox
from gateway.sftp.files import RECENT_UPLOADS
from gateway.sftp.quota import Quota

KV, PK, CANTON = "kv-bau-zh", "pk-bau-zh", "canton-zh"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    # The settle time is for local writers that close and reopen; an SFTP upload is complete when the client
    # closes it, so no test here may wait for it (every wait below is shorter than 120 s).
    sandbox = Sandbox(settings={"settle_seconds": 120, "rescan_seconds": 1, "max_sessions_per_organ": 3})
    sandbox.cli("init")
    for organ, kind in ((KV, "control_body"), (PK, "joint_committee"), (CANTON, "canton")):
        sandbox.add_organ(organ, kind)
    sandbox.allow(KV, PK)
    sandbox.start()
    yield sandbox
    sandbox.close()


def ssh_options(box: Sandbox, organ: str, key: Path | None = None) -> list[str]:
    return harness.ssh_options(key or box.organs[organ].ssh_key)


def openssh_sftp(
    box: Sandbox, organ: str, commands: str | bytes, key: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the OpenSSH `sftp` client in batch mode as ``organ``."""
    assert box.port is not None
    return harness.openssh_sftp(box.port, organ, key or box.organs[organ].ssh_key, commands)


class Session(paramiko.SFTPClient):
    """A paramiko SFTP session that also ends its SSH connection when closed."""

    def close(self) -> None:
        super().close()
        self.get_channel().get_transport().close()


def paramiko_sftp(box: Sandbox, organ: str) -> Session:
    key = paramiko.Ed25519Key.from_private_key_file(str(box.organs[organ].ssh_key))
    transport = paramiko.Transport(("127.0.0.1", box.port))
    transport.connect(username=organ, pkey=key)
    return Session.from_transport(transport)


def test_upload_delivery_download_and_pick_up_over_sftp(box: Sandbox, tmp_path: Path) -> None:
    doc = samples.make_dossier(KV, PK, attachments=[("bericht.pdf", samples.make_pdf(30_000))])
    local = tmp_path / "report.json"
    local.write_bytes(samples.dossier_bytes(doc))
    done = openssh_sftp(box, KV, f"cd outbox\nput -p {local}\nls -l\n")
    assert done.returncode == 0, done.stderr

    transfer = box.wait_transfer("report.json", "delivered")
    with paramiko_sftp(box, PK) as sftp:
        assert sftp.listdir("/inbox") == [transfer.delivered_name]
        fetched = tmp_path / transfer.delivered_name
        sftp.get(f"/inbox/{transfer.delivered_name}", str(fetched))
        plain = box.decrypt(PK, fetched)
        assert plain.data == local.read_bytes() and plain.signature_valid
        sftp.remove(f"/inbox/{transfer.delivered_name}")

    box.wait_transfer("report.json", "fetched")  # the ledger first, then the receipt's file: wait for both
    box.wait_for(lambda: len(list(box.folder(KV, "receipts").glob(f"*{transfer.id}*"))) == 2, 20, "receipt 110")
    with paramiko_sftp(box, KV) as sftp:
        names = sftp.listdir("/receipts")
        codes = sorted(json.loads(sftp.open(f"/receipts/{n}").read())["status_code"] for n in names if transfer.id in n)
    assert codes == [100, 110]

    def audited() -> bool:  # the door writes its access events every 0.2 s
        actions = {e["action"] for e in json.loads(box.cli("audit", "list", "--organ", PK, "--json").stdout)}
        return {"login", "list", "download", "remove"} <= actions

    box.wait_for(audited, 20, "the committee's accesses in the audit trail")


def lftp(box: Sandbox, organ: str, commands: str) -> subprocess.CompletedProcess:
    """Run lftp over SFTP as ``organ`` (OpenSSH's ssh under it, with the organ's key): ``commands``, stopping at the
    first that fails."""
    ssh = " ".join(["ssh", "-a", "-x", *ssh_options(box, organ)])
    script = f'set sftp:connect-program "{ssh}"; set cmd:fail-exit yes; set net:max-retries 1; {commands}; bye'
    return subprocess.run(
        ["lftp", "-u", f"{organ},", "-p", str(box.port), "-e", script, "sftp://127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("lftp") is None, reason="lftp is not installed (.ci/run installs it)")
def test_lftp_mirrors_a_night_up_resumes_a_package_and_picks_the_deliveries_up(box: Sandbox, tmp_path: Path) -> None:
    # The spec names lftp: an organ's cron job mirrors its export folder up (under lftp's own temporary names),
    # resumes a package cut off the night before, and its recipient fetches and removes what it was sent.
    night = tmp_path / "night"
    night.mkdir()
    for i in range(3):
        (night / f"lftp-{i}.json").write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    done = lftp(box, KV, f"set xfer:use-temp-file yes; mirror -R {night} /outbox")
    assert done.returncode == 0, done.stderr
    pdf = samples.make_pdf(3 << 20, seed=4)
    package = samples.write_package(
        tmp_path / "lftp.zip",
        samples.make_dossier(KV, PK, attachments=[("scan.pdf", pdf)], embed=False),
        {"scan.pdf": pdf},
    )
    _cut_off(box, "/outbox/lftp.zip.part", package.read_bytes()[: 1 << 20])
    box.wait_for(lambda: (box.folder(KV, "outbox") / "lftp.zip.part").exists(), 10, "the cut-off package kept")
    done = lftp(box, KV, f"put -c {package} -o /outbox/lftp.zip.part; mv /outbox/lftp.zip.part /outbox/lftp.zip")
    assert done.returncode == 0, done.stderr

    names = [f"lftp-{i}.json" for i in range(3)] + ["lftp.zip"]
    delivered = [box.wait_transfer(name, "delivered").delivered_name for name in names]
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    done = lftp(box, PK, f"lcd {fetched}; " + "; ".join(f"get -E /inbox/{name}" for name in delivered))
    assert done.returncode == 0, done.stderr
    assert box.decrypt(PK, fetched / (delivered[-1] or "")).data == package.read_bytes()
    for name in names:
        box.wait_transfer(name, "fetched")
    resumed = json.loads(box.cli("audit", "list", "--organ", KV, "--action", "upload_resumed", "--json").stdout)
    assert [e["detail"] for e in resumed if "lftp" in e["detail"]] == [f"/outbox/lftp.zip.part at {1 << 20} bytes"]


def _curl_speaks_sftp() -> bool:
    curl = shutil.which("curl")
    return curl is not None and "sftp" in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout


@pytest.mark.skipif(not _curl_speaks_sftp() or shutil.which("rclone") is None, reason="curl (sftp) or rclone missing")
def test_curl_and_rclone_upload_and_rclone_moves_the_deliveries_down(box: Sandbox, tmp_path: Path) -> None:
    # The spec names curl and rclone too: a script's one-line upload with each, and a recipient whose job moves its
    # inbox down with rclone (fetched, then removed: the pick-up). rclone asks for md5sum over SSH; the door
    # offers SFTP only, and rclone goes on without.
    for name in ("curl.json", "rclone-1.json", "rclone-2.json"):
        (tmp_path / name).write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    key = box.organs[KV].ssh_key
    curl_login = ["-sS", "-k", "--key", str(key), "--pubkey", f"{key}.pub", "-u", f"{KV}:"]
    sent = [
        ["curl", *curl_login, "-T", str(tmp_path / "curl.json"), f"sftp://127.0.0.1:{box.port}/outbox/curl.json"],
        ["rclone", "copyto", str(tmp_path / "rclone-1.json"), f"{_rclone_remote(box, KV)}/outbox/rclone-1.json"],
        ["rclone", "copy", str(tmp_path), f"{_rclone_remote(box, KV)}/outbox", "--include", "rclone-2.json"],
    ]
    for command in sent:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    delivered = [
        box.wait_transfer(name, "delivered").delivered_name or ""
        for name in ("curl.json", "rclone-1.json", "rclone-2.json")
    ]
    fetched = tmp_path / "fetched"
    only_these = [arg for name in delivered for arg in ("--include", name)]
    done = subprocess.run(
        ["rclone", "move", f"{_rclone_remote(box, PK)}/inbox", str(fetched), *only_these],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert box.decrypt(PK, fetched / delivered[0]).data == (tmp_path / "curl.json").read_bytes()
    for name in ("curl.json", "rclone-1.json", "rclone-2.json"):
        box.wait_transfer(name, "fetched")


def _rclone_remote(box: Sandbox, organ: str) -> str:
    return f":sftp,host=127.0.0.1,port={box.port},user={organ},key_file={box.organs[organ].ssh_key}:"


def test_filepart_uploads_renamed_when_done_are_delivered_once(box: Sandbox) -> None:
    data = samples.dossier_bytes(samples.make_dossier(KV, PK))
    with paramiko_sftp(box, KV) as sftp:
        with sftp.open("/outbox/winscp.json.filepart", "wb") as fh:
            fh.write(data)
        time.sleep(0.5)  # the watcher ignores the .filepart name
        sftp.rename("/outbox/winscp.json.filepart", "/outbox/winscp.json")
        box.wait_transfer("winscp.json", "delivered")
        # a client that sets the time or checks the size after its rename (WinSCP, lftp) hears no error, although
        # the gateway took the file at once; its temporary name is gone
        assert sftp.stat("/outbox/winscp.json").st_size == len(data)
        sftp.utime("/outbox/winscp.json", (1_700_000_000, 1_700_000_000))
        with pytest.raises(FileNotFoundError):
            sftp.stat("/outbox/winscp.json.filepart")
    assert [t.file_name for t in box.transfers()].count("winscp.json") == 1


def test_many_small_uploads_in_one_session_are_each_delivered_and_the_files_made_ahead_stay_empty(
    box: Sandbox, tmp_path: Path
) -> None:
    # The door makes upload files ahead (gateway.sftp.spares); 40 uploads take more than its 32 ready ones.
    names = []
    for i in range(40):
        local = tmp_path / f"batch-{i:02d}.json"
        local.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
        names.append(local.name)
    done = openssh_sftp(box, KV, f"cd outbox\nlcd {tmp_path}\nput batch-*.json\n")
    assert done.returncode == 0, done.stderr
    for name in names:
        box.wait_transfer(name, "delivered")
    assert sorted(t.file_name for t in box.transfers() if t.file_name in names) == names
    spares = box.data_dir / "spool" / "spare"
    assert [p.stat().st_size for p in spares.iterdir()] == [0] * 32, "refilled, and never holding a byte of data"


def test_stat_and_setstat_right_after_upload_succeed_although_the_gateway_took_the_file(box: Sandbox) -> None:
    data = samples.dossier_bytes(samples.make_dossier(KV, PK))
    with paramiko_sftp(box, KV) as sftp:
        with sftp.open("/outbox/quick.json", "wb") as fh:
            fh.write(data)
        box.wait_transfer("quick.json", "delivered")
        assert sftp.stat("/outbox/quick.json").st_size == len(data)
        sftp.utime("/outbox/quick.json", (1_700_000_000, 1_700_000_000))


def test_a_long_session_is_answered_for_its_last_uploads_only(box: Sandbox, tmp_path: Path) -> None:
    # A night's export in one session; paramiko's put confirms each upload with a stat, which the door answers
    # although the gateway took the file at once. It remembers a session's last RECENT_UPLOADS uploads, not all:
    # a session of 20,000 grew the door by 19 MiB, past 100 MB of RSS.
    names = [f"night-{i:03d}.json" for i in range(RECENT_UPLOADS + 4)]
    for name in names:
        (tmp_path / name).write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    with paramiko_sftp(box, KV) as sftp:
        for name in names:
            sftp.put(str(tmp_path / name), f"/outbox/{name}")  # raises if the stat after it fails
        box.wait_for(lambda: not any(box.folder(KV, "outbox").iterdir()), 60, "every upload taken")
        assert sftp.stat(f"/outbox/{names[-1]}").st_size == (tmp_path / names[-1]).stat().st_size
        with pytest.raises(FileNotFoundError):
            sftp.stat(f"/outbox/{names[0]}")
    box.wait_for(
        lambda: (
            set(names) <= {t.file_name for t in box.transfers() if t.state == "delivered"}
            and not box.ledger.due_receipts()
        ),
        60,
        "every upload delivered, its receipt written",
    )


def test_an_upload_is_taken_when_the_client_closes_it_without_waiting_to_settle(box: Sandbox) -> None:
    data = samples.dossier_bytes(samples.make_dossier(KV, PK))
    with paramiko_sftp(box, KV) as sftp, sftp.open("/outbox/closed.json", "wb") as fh:
        fh.write(data)
    transfer = box.wait_for(lambda: next((t for t in box.transfers() if t.file_name == "closed.json"), None), 30)
    assert transfer is not None, "taken at the protocol close, not after the 120 s settle time"


def test_an_upload_keeping_a_time_in_the_future_is_taken_at_the_close(box: Sandbox, tmp_path: Path) -> None:
    # `put -p` sends the local file's times; the client's clock runs a day ahead of the gateway's.
    local = tmp_path / "ahead.json"
    local.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    ahead = time.time() + 86_400
    os.utime(local, (ahead, ahead))
    done = openssh_sftp(box, KV, f"cd outbox\nput -p {local}\n")
    assert done.returncode == 0, done.stderr
    transfer = box.wait_for(lambda: next((t for t in box.transfers() if t.file_name == "ahead.json"), None), 30)
    assert transfer is not None, "taken at the protocol close, not when the client's clock says it was written"


def test_an_upload_named_in_latin1_is_refused_at_its_open_and_the_audit_trail_goes_on(
    box: Sandbox, tmp_path: Path
) -> None:
    # A legacy client sends its file names in Latin-1 ("Zürich" with the single byte 0xFC). The ledger, the audit
    # trail and the receipts hold text, so the door refuses such a name when the client opens it: the client sees
    # its upload fail at once, nothing is stored, and the door goes on auditing (until the seventeenth session the
    # name reached the audit trail, whose every later write then failed).
    local = tmp_path / "latin1.json"
    local.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    refused = openssh_sftp(box, KV, b"cd outbox\nput " + os.fsencode(local) + b" Z\xfcrich.json\n")
    assert refused.returncode != 0 and b"Permission denied" in refused.stderr
    assert openssh_sftp(box, KV, f"cd outbox\nput {local} Zuerich.json\n").returncode == 0
    box.wait_transfer("Zuerich.json", "delivered")

    def audited() -> list[str] | None:
        events = json.loads(box.cli("audit", "list", "--organ", KV, "--json").stdout)
        details = [e["detail"] for e in events if e["action"] in ("refused", "upload")]
        return details if any("Zuerich.json" in d for d in details) else None

    assert any("paths must be UTF-8" in d for d in box.wait_for(audited, 30, "the upload's audit event"))


def test_a_connection_dropped_mid_upload_leaves_nothing(box: Sandbox) -> None:
    outbox = box.folder(KV, "outbox")
    sftp = paramiko_sftp(box, KV)
    fh = sftp.open("/outbox/dropped.json", "wb")
    fh.set_pipelined(True)
    fh.write(b"{" + b" " * (40 << 20))  # past the door's first background flush (every 32 MiB)
    fh.flush()
    _drop(sftp)
    box.wait_for(lambda: not list(outbox.iterdir()), 10, "temp upload discarded")
    time.sleep(1.5)
    assert not [t for t in box.transfers() if t.file_name == "dropped.json"]
    assert "upload_aborted" in box.cli("audit", "list", "--organ", KV, "--json").stdout


def _cut_off(box: Sandbox, path: str, data: bytes) -> None:
    """Upload ``data`` to ``path`` as ``KV`` with paramiko, each write acknowledged, then drop the connection."""
    sftp = paramiko_sftp(box, KV)
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):  # the file's close, with the line gone
        fh = sftp.open(path, "wb")
        fh.write(data)
        fh.flush()
        _drop(sftp)


def _drop(sftp: paramiko.SFTPClient) -> None:
    """The line goes: the connection ends without a word of SFTP or SSH."""
    transport = sftp.get_channel().get_transport()
    transport.sock.shutdown(socket.SHUT_RDWR)
    transport.close()


def _send_whole(box: Sandbox, local: Path) -> int:
    """``KV`` sends a fresh dossier ``local`` under its partial upload's name with OpenSSH (truncating it), renames it
    when done and sees it delivered; returns its size."""
    local.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
    partial, final = f"/outbox/{local.name}.part", f"/outbox/{local.name}"
    done = openssh_sftp(box, KV, f"put {local} {partial}\nrename {partial} {final}\n")
    assert done.returncode == 0, done.stderr
    box.wait_transfer(local.name, "delivered")
    return local.stat().st_size


def test_a_package_cut_off_under_a_temporary_name_is_resumed_where_it_ended(box: Sandbox, tmp_path: Path) -> None:
    # A package of megabytes over a line that drops in the night. The organ's client uploads it under a temporary
    # name (WinSCP's .filepart; OpenSSH's reput to a .part name), which the gateway never collects: the door keeps
    # what arrived, and the client sends only the rest, then renames it.
    pdf = samples.make_pdf(6 << 20, seed=25)
    doc = samples.make_dossier(KV, PK, attachments=[("scan.pdf", pdf)], embed=False)
    package = samples.write_package(tmp_path / "scan.zip", doc, {"scan.pdf": pdf})
    data, half = package.read_bytes(), 3 << 20
    kept = box.folder(KV, "outbox") / "scan.zip.part"
    _cut_off(box, "/outbox/scan.zip.part", data[:half])
    box.wait_for(lambda: kept.exists(), 10, "what arrived kept under its name")
    assert kept.read_bytes() == data[:half]
    time.sleep(1.5)  # rescans (every second here) leave it alone
    assert not [t for t in box.transfers() if t.file_name.startswith("scan.zip")]
    with paramiko_sftp(box, KV) as sftp, pytest.raises(OSError):
        sftp.open("/outbox/scan.zip.part", "xb")  # create it, exclusively: it exists

    done = openssh_sftp(
        box, KV, f"reput {package} /outbox/scan.zip.part\nrename /outbox/scan.zip.part /outbox/scan.zip\n"
    )
    assert done.returncode == 0, done.stderr
    transfer = box.wait_transfer("scan.zip", "delivered")
    plain = box.decrypt(PK, box.folder(PK, "inbox") / (transfer.delivered_name or ""))
    assert plain.data == data and plain.signature_valid

    # A client that starts over (it opens the name truncating it) replaces what was kept
    _cut_off(box, "/outbox/again.json.part", b"{" + b" " * 100_000)
    box.wait_for(lambda: (box.folder(KV, "outbox") / "again.json.part").exists(), 10, "the second one kept")
    again = _send_whole(box, tmp_path / "again.json")

    # A line that died without a word: the door sees the connection gone only minutes later, while the client has
    # long since come back, not seen its partial upload (hidden while the old session holds it) and sent it all again
    stale = paramiko_sftp(box, KV)
    stale_file = stale.open("/outbox/stale.json.part", "wb")
    stale_file.write(b"{" * 1000)
    stale_file.flush()
    stale_size = _send_whole(box, tmp_path / "stale.json")
    _drop(stale)

    def audited() -> list[tuple[str, str]] | None:
        events = json.loads(box.cli("audit", "list", "--organ", KV, "--json").stdout)
        ours = ("scan.zip.part", "again.json.part", "stale.json.part")  # the box's other tests upload such names too
        found = [(e["action"], e["detail"]) for e in events if any(name in e["detail"] for name in ours)]
        return found if any(action == "upload_aborted" for action, _ in found) else None

    assert box.wait_for(audited, 20, "the door's events") == [
        ("upload_interrupted", f"/outbox/scan.zip.part kept after {half} bytes to resume"),
        ("refused", "write: /outbox/scan.zip.part exists already; uploads never overwrite"),
        ("upload_resumed", f"/outbox/scan.zip.part at {half} bytes"),
        ("upload", f"/outbox/scan.zip.part {len(data)} bytes"),
        ("rename", "/outbox/scan.zip.part -> /outbox/scan.zip"),
        ("upload_interrupted", "/outbox/again.json.part kept after 100001 bytes to resume"),
        ("remove", "/outbox/again.json.part: a new upload under its name replaces it"),
        ("upload", f"/outbox/again.json.part {again} bytes"),
        ("rename", "/outbox/again.json.part -> /outbox/again.json"),
        ("upload", f"/outbox/stale.json.part {stale_size} bytes"),
        ("rename", "/outbox/stale.json.part -> /outbox/stale.json"),
        ("upload_aborted", "/outbox/stale.json.part after 1000 bytes"),  # not kept: the newer one came through
    ]
    assert not list(box.folder(KV, "outbox").iterdir())


def test_a_partial_upload_open_when_the_gateway_stops_or_is_killed_is_kept_for_its_client_to_resume() -> None:
    sandbox = Sandbox()
    try:
        sandbox.cli("init")
        sandbox.add_organ(KV, "control_body")
        outbox = sandbox.folder(KV, "outbox")
        if not _takes_user_attributes(outbox):
            pytest.skip("the filesystem of the outboxes takes no user extended attributes")
        for name, stop in (("night.zip.filepart", signal.SIGTERM), ("crash.zip.filepart", signal.SIGKILL)):
            sandbox.start()
            sftp = paramiko_sftp(sandbox, KV)
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):  # the gateway goes
                fh = sftp.open(f"/outbox/{name}", "wb")
                fh.write(b"PK" * 100_000)
                fh.flush()
                # systemd's stop or an upgrade's restart; the OOM killer or a crash, after which the next start
                # puts it back under its name
                sandbox.stop(stop)
        sandbox.start()
        assert {p.name: p.read_bytes() for p in outbox.iterdir()} == {
            "night.zip.filepart": b"PK" * 100_000,
            "crash.zip.filepart": b"PK" * 100_000,
        }
        events = json.loads(sandbox.cli("audit", "list", "--action", "upload_interrupted", "--json").stdout)
        assert [e["detail"] for e in events] == [
            "/outbox/night.zip.filepart kept after 200000 bytes to resume",
            "/outbox/crash.zip.filepart kept after 200000 bytes to resume (the gateway had ended with it open)",
        ]
    finally:
        sandbox.close()


def _takes_user_attributes(folder: Path) -> bool:
    probe = folder / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def test_the_jail_shows_three_folders_and_refuses_every_escape(box: Sandbox) -> None:
    (box.folder(KV, "outbox") / "planted").symlink_to("/etc")
    with paramiko_sftp(box, KV) as sftp:
        assert sorted(sftp.listdir("/")) == ["inbox", "outbox", "receipts"]
        assert sorted(sftp.listdir("/../..")) == ["inbox", "outbox", "receipts"], "'..' cannot climb out"
        # the sequence that escapes asyncssh's chroot: every step refused, nothing above the jail listed
        for step in (
            lambda: sftp.mkdir("/a"),
            lambda: sftp.mkdir("/a/b"),
            lambda: sftp.symlink("../..", "/a/b/up"),
            lambda: sftp.rename("/a/b/up", "/up"),
            lambda: sftp.listdir("/up"),
        ):
            with pytest.raises(OSError):
                step()
        for step in (
            lambda: sftp.mkdir("/outbox/sub"),
            lambda: sftp.symlink("/etc/passwd", "/outbox/link"),
            lambda: sftp.open("/inbox/x.json", "wb"),
            lambda: sftp.open("/receipts/x.json", "wb"),
            lambda: sftp.open("/outbox/planted/passwd"),
            lambda: sftp.listdir("/outbox/planted"),
            lambda: sftp.open("/../../etc/passwd"),
            lambda: sftp.chmod("/outbox", 0o777),
            lambda: sftp.stat("/outbox/planted"),
            lambda: sftp.open(f"/../../{PK}/inbox/x"),
        ):
            with pytest.raises(OSError):
                step()
        assert "planted" not in sftp.listdir("/outbox"), "links are not shown"
        with sftp.open("/outbox/mine.json.tmp", "wb") as fh:
            fh.write(b"{}")
        with pytest.raises(OSError):
            sftp.rename("/outbox/mine.json.tmp", "/inbox/mine.json")
        sftp.remove("/outbox/mine.json.tmp")
    (box.folder(KV, "outbox") / "planted").unlink()
    with paramiko_sftp(box, PK) as sftp:
        assert "mine.json.tmp" not in sftp.listdir("/outbox"), "organs never see each other's files"
    hardlink = openssh_sftp(box, KV, "ln /receipts/x /outbox/y\n")
    assert hardlink.returncode != 0
    refused = json.loads(box.cli("audit", "list", "--organ", KV, "--json").stdout)
    assert any(e["action"] == "refused" for e in refused)


def test_only_sftp_is_offered(box: Sandbox) -> None:
    base = ["ssh", *ssh_options(box, KV), "-p", str(box.port), f"{KV}@127.0.0.1"]
    assert subprocess.run([*base, "id"], capture_output=True, timeout=30).returncode != 0, "exec refused"
    assert subprocess.run([*base, "-tt"], capture_output=True, timeout=30, input=b"exit\n").returncode != 0
    forward = subprocess.run(
        ["ssh", *ssh_options(box, KV), "-p", str(box.port), "-W", "127.0.0.1:5432", f"{KV}@127.0.0.1"],
        capture_output=True,
        timeout=30,
        input=b"",
    )
    assert forward.returncode != 0, "-W forwarding refused"


_SHA1_ONLY = {  # what a client that knows only SHA-1 asks for
    "key exchange": ["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
    "an RSA key's SHA-1 signature": ["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"],
    "the host key's SHA-1 signature": ["-o", "HostKeyAlgorithms=ssh-rsa"],
    "MAC": ["-o", "MACs=hmac-sha1", "-o", "Ciphers=aes128-ctr"],
}


def _login(port: int | None, organ: str, key: Path, options: list[str]) -> int:
    done = subprocess.run(
        ["sftp", *harness.ssh_options(key), *options, "-P", str(port), "-b", "-", f"{organ}@127.0.0.1"],
        input=b"ls /outbox\n",
        capture_output=True,
        timeout=60,
    )
    return done.returncode


async def _sign_with_sha1(port: int | None, organ: str, key: Path) -> bool:
    """Log in with an RSA key signed with SHA-1 (ssh-rsa) whatever the door offers, as old clients do."""
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username=organ, client_keys=[str(key)], signature_algs=["ssh-rsa"], known_hosts=None
        ):
            return True
    except asyncssh.PermissionDenied:
        return False


def test_a_scan_of_the_door_finds_no_sha1_and_an_old_client_gets_in_only_where_the_admin_allows_it(
    tmp_path: Path,
) -> None:
    # A security review scans the door (ssh-audit): it offers what OpenSSH 9's sshd offers, no SHA-1 (asyncssh's
    # own defaults have SHA-1 key exchanges, signatures and MACs). An organ whose old software knows nothing newer
    # is refused, the admin reads why in the audit trail, and lets it in with ssh_allow_sha1.
    rsa = tmp_path / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", str(rsa)], check=True)
    for allow_sha1 in (False, True):
        sandbox = Sandbox(settings={"ssh_allow_sha1": allow_sha1})
        try:
            sandbox.cli("init")
            sandbox.cli("organ", "add", "canton-be", "--kind", "canton", "--name", "Kanton Bern")
            sandbox.cli("organ", "ssh-key", "add", "canton-be", f"{rsa}.pub")
            port = sandbox.start()
            with socket.create_connection(("127.0.0.1", port or 0)) as probe:  # monitoring: no event of its own
                probe.recv(256)
                probe.sendall(b"SSH-2.0-check_ssh_2.3\r\n")
            assert _login(port, "canton-be", rsa, []) == 0, "an RSA key signed with SHA-2, as clients do since 2018"
            refused = {what: _login(port, "canton-be", rsa, options) != 0 for what, options in _SHA1_ONLY.items()}
            refused["a client that signs with SHA-1 unasked"] = not asyncio.run(_sign_with_sha1(port, "canton-be", rsa))
            if allow_sha1:
                assert not any(refused.values()), refused
                continue
            assert all(refused.values()), refused

            def explained(box: Sandbox = sandbox) -> list[str] | None:
                events = json.loads(box.cli("audit", "list", "--action", "login_failed", "--json").stdout)
                return [e["detail"] for e in events] if len(events) == len(_SHA1_ONLY) + 1 else None

            # each in turn; the client or the door may be first to find that they share no algorithm
            details = sandbox.wait_for(explained, 10, "a login_failed event for each refusal, with its reason")
            in_key_exchange = ("the key exchange failed", "the client left in the key exchange")
            assert [d.startswith(in_key_exchange) for d in details] == [True, False, True, True, False]
            assert details[1].startswith("user 'canton-be' offered no key the door takes")
            assert details[4].startswith("user 'canton-be' offered no key the door takes")
            assert all(d.endswith("needs ssh_allow_sha1") for d in details)
        finally:
            sandbox.close()


def test_wrong_key_unknown_user_and_disabled_organ_are_refused_alike(box: Sandbox) -> None:
    other_key = box.organs[PK].ssh_key
    assert openssh_sftp(box, KV, "ls\n", key=other_key).returncode != 0
    assert openssh_sftp(box, "nobody", "ls\n", key=other_key).returncode != 0
    box.cli("organ", "disable", CANTON)
    try:
        assert openssh_sftp(box, CANTON, "ls\n").returncode != 0
    finally:
        box.cli("organ", "enable", CANTON)
    assert openssh_sftp(box, CANTON, "ls\n").returncode == 0

    def three_failed() -> list[dict[str, Any]] | None:
        events = json.loads(box.cli("audit", "list", "--action", "login_failed", "--json").stdout)
        return events if len(events) >= 3 else None

    # the door's access events reach the trail in rounds (gateway.ledger.audit_buffer): the last may be a round late
    failed = box.wait_for(three_failed, 10, "the three failed logins in the audit trail")
    assert all(e["peer"].startswith("127.0.0.1:") for e in failed)


def test_a_key_limited_to_the_organs_own_network_logs_in_from_there_only(box: Sandbox) -> None:
    aargau = "canton-ag"
    public_key = str(box.add_organ(aargau, "canton").ssh_key) + ".pub"

    def limit_key(sources: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The admin limits the canton's key to ``sources`` (remove, then add again)."""
        [key] = json.loads(box.cli("organ", "ssh-key", "list", aargau, "--json").stdout)
        box.cli("organ", "ssh-key", "remove", aargau, key["fingerprint"])
        return box.cli("organ", "ssh-key", "add", aargau, public_key, "--from", sources, check=check)

    typo = limit_key("10.0.0.0/8,intranet", check=False)
    assert (
        typo.returncode == 2
        and ("error SSH_KEY_FROM_INVALID: --from '10.0.0.0/8,intranet': 'intranet' is not an IP address or network")
        in typo.stderr
    ), typo.stderr
    box.cli("organ", "ssh-key", "add", aargau, public_key)
    limit_key("10.0.0.0/8")  # the canton's office network: the gateway's own 127.0.0.1 is not in it
    assert openssh_sftp(box, aargau, "ls\n").returncode != 0

    def refused_here() -> list[dict[str, Any]]:
        """The canton's failed logins today, as an auditor asks for them."""
        today = f"{datetime.now(UTC):%Y-%m-%d}"
        filters = ("--organ", aargau, "--action", "login_failed", "--since", today)
        return json.loads(box.cli("audit", "list", *filters, "--json").stdout)

    [failed] = box.wait_for(refused_here, 20, "the refusal and its reason in the audit trail")
    assert failed["action"] == "login_failed" and "not from 127.0.0.1" in failed["detail"]
    tomorrow = f"{datetime.now(UTC) + timedelta(days=1):%Y-%m-%d}"
    assert json.loads(box.cli("audit", "list", "--organ", aargau, "--since", tomorrow, "--json").stdout) == []
    misspelt = box.cli("audit", "list", "--organ", aargau, "--action", "login_fail", "--json")
    assert json.loads(misspelt.stdout) == [], "alone, an empty list would read as 'no failed logins'"
    assert "no event in the audit trail has the action 'login_fail'" in misspelt.stderr, misspelt.stderr
    assert "login_failed" in misspelt.stderr.split("; it has ")[1].split(", "), "the actions the trail has"
    again = box.cli("organ", "ssh-key", "add", aargau, public_key, "--from", "127.0.0.0/8", check=False)
    assert again.returncode == 2 and "remove it and add it again" in again.stderr

    limit_key("127.0.0.0/8, !127.0.0.2")
    [listed] = json.loads(box.cli("organ", "ssh-key", "list", aargau, "--json").stdout)
    assert listed["from"] == "127.0.0.0/8,!127.0.0.2/32"
    assert openssh_sftp(box, aargau, "ls\n").returncode == 0, "from 127.0.0.1: in, and not excluded"
    key = paramiko.Ed25519Key.from_private_key_file(str(box.organs[aargau].ssh_key))
    with socket.create_connection(("127.0.0.1", box.port), source_address=("127.0.0.2", 0)) as excluded:
        transport = paramiko.Transport(excluded)
        with pytest.raises(paramiko.AuthenticationException):
            transport.connect(username=aargau, pkey=key)
        transport.close()
    added = [e["detail"] for e in json.loads(box.cli("audit", "list", "--organ", aargau, "--json").stdout)]
    assert any(d.endswith(" from 127.0.0.0/8,!127.0.0.2/32") for d in added), "the audit trail has the limit"


def test_a_stranger_logging_in_under_a_name_in_console_markup_is_shown_as_it_is_in_the_audit_list(
    box: Sandbox,
) -> None:
    stranger = "[/x][bold]root"  # `audit list` ended with a traceback on it before: no admin could read the trail
    assert openssh_sftp(box, stranger, "ls\n", key=box.organs[PK].ssh_key).returncode != 0

    def failed_login() -> bool:
        events = json.loads(box.cli("audit", "list", "--limit", "20", "--json").stdout)
        return any(e["action"] == "login_failed" and stranger in e["detail"] for e in events)

    box.wait_for(failed_login, 20, "the stranger's failed login in the audit trail")
    shown = box.cli("audit", "list", "--limit", "20", check=False)
    assert shown.returncode == 0 and f"'{stranger}'" in shown.stdout, shown.stdout + shown.stderr


def test_an_organ_cannot_fill_the_gateways_disk_an_upload_past_its_quota_is_refused_as_it_comes(
    tmp_path: Path,
) -> None:
    box = Sandbox(settings={"max_message_bytes": 3_000_000, "upload_quota_bytes": 5_000_000, "rescan_seconds": 1})
    geneva = "canton-ge"
    try:
        box.init_pair(KV, PK)
        box.cli("organ", "add", geneva, "--kind", "canton", "--name", "Canton GE")  # no OpenPGP key yet: held
        box.allow(KV, geneva)
        port = box.start()
        outbox = box.folder(KV, "outbox")

        def put(path: Path) -> subprocess.CompletedProcess:
            return harness.openssh_sftp(port, KV, box.organs[KV].ssh_key, f"put {path} /outbox/\n")

        def refusals() -> list[str]:
            events = json.loads(box.cli("audit", "list", "--organ", KV, "--action", "refused", "--json").stdout)
            return [e["detail"] for e in events]

        (scans := tmp_path / "scans.zip").write_bytes(os.urandom(4_000_000))  # more than the gateway takes,
        assert put(scans).returncode == 0  # but within the quota: stored, and rejected with its receipt (the spec)
        assert box.wait_transfer("scans.zip", "rejected").status_code == 330

        for n in (1, 2):  # two dossiers of 2 MB for the canton without a key: both held, 4 MB waiting
            doc = samples.make_dossier(KV, geneva, attachments=[("scan.pdf", samples.make_pdf(1_400_000, seed=n))])
            (dossier := tmp_path / f"to-geneva-{n}.json").write_bytes(samples.dossier_bytes(doc))
            assert put(dossier).returncode == 0
            box.wait_transfer(dossier.name, "held")
        third = samples.make_dossier(KV, PK, attachments=[("scan.pdf", samples.make_pdf(1_400_000, seed=3))])
        (dossier := tmp_path / "to-committee.json").write_bytes(samples.dossier_bytes(third))
        done = put(dossier)
        assert done.returncode != 0, "past the quota: refused as it comes"
        [over] = box.wait_for(refusals, 20, "the quota's refusal in the audit trail")
        told = "/outbox/to-committee.json was not stored: it would take kv-bau-zh past its quota of 4.8 MiB waiting"
        held = sum(t.size for t in box.transfers() if t.state == "held")
        assert told in over and f"({held / 2**20:.1f} MiB are waiting already: in its outbox, or received" in over
        assert over.endswith("send it again once those are delivered"), over
        assert not list(outbox.iterdir()) and "to-committee.json" not in {t.file_name for t in box.transfers()}

        def listed() -> dict[str, Any]:
            return next(o for o in json.loads(box.cli("organ", "list", "--json").stdout) if o["id"] == KV)

        # the admin, asked why uploads fail, sees what waits against the quota, and gives the organ one of its own
        kv = listed()
        assert kv["waiting_bytes"] == held and kv["upload_quota_bytes"] == 5_000_000 and not kv["own_upload_quota"]
        near = box.cli("status", "--quota-percent", "50", check=False)  # what monitoring would have said before
        told = f"near quota: {KV} has {held / 2**20:.1f} MiB of its 4.8 MiB upload quota waiting at the gateway"
        assert near.returncode == 1 and told in " ".join(near.stderr.split()), near.stderr
        for typo in ("8MB", "0.5", "99999999999TiB"):  # decimal units, a fraction of a byte, past 8 EiB
            refused = box.cli("organ", "quota", KV, typo, check=False)
            told = f"error QUOTA_INVALID: '{typo}' is not a size: whole bytes, or a number with KiB"
            assert refused.returncode == 2 and told in " ".join(refused.stderr.split()), refused.stderr
        assert "error ORGAN_UNKNOWN" in box.cli("organ", "quota", "kv-bau-zx", "8MiB", check=False).stderr
        said = box.cli("organ", "quota", KV, "8MiB").stdout
        assert "organ kv-bau-zh: upload quota 8.0 MiB (its own)" in " ".join(said.split())
        assert "8.0 MiB (own)" in box.cli("organ", "list").stdout
        assert box.cli("status", "--quota-percent", "50").returncode == 0, "less than half of 8 MiB waits"
        assert put(dossier).returncode == 0, "within its own quota: the same upload goes through while the two wait"
        delivered = box.wait_transfer("to-committee.json", "delivered")
        assert box.decrypt(PK, box.folder(PK, "inbox") / delivered.delivered_name).data == dossier.read_bytes()

        box.cli("organ", "quota", KV, "default")  # the gateway's setting again
        kv = listed()
        assert kv["upload_quota_bytes"] == 5_000_000 and not kv["own_upload_quota"]
        changes = json.loads(box.cli("audit", "list", "--action", "organ_quota", "--json").stdout)
        assert [e["detail"] for e in changes] == ["upload_quota_bytes=8388608", "upload_quota_bytes=None"]
        box.add_organ_keys(geneva)  # the canton's key arrives: what waited is delivered, the quota free again
        for n in (1, 2):
            box.wait_transfer(f"to-geneva-{n}.json", "delivered")
        assert listed()["waiting_bytes"] == 0
    finally:
        box.close()


def test_the_quota_holds_before_the_doors_first_reading_and_while_the_ledger_does_not_answer() -> None:
    def unanswered(organ: str) -> tuple[int, int]:
        raise OSError("the ledger does not answer")

    async def uploads() -> None:
        quota = Quota(5_000_000, unanswered)  # the gateway's setting, until a reading brings the organ's own
        quota.wrote(KV, 4_000_000)  # an upload under way, right after the door started
        assert quota.over(KV, 2_000_000) == 4_000_000, "past the setting, with no reading yet"
        await quota.fresh(KV)  # the reading fails: the setting stands
        assert quota.over(KV, 2_000_000) == 4_000_000 and quota.over(KV, 1_000_000) is None

    asyncio.run(uploads())


def test_an_open_session_ends_when_its_organ_is_disabled_or_its_key_removed(box: Sandbox) -> None:
    zug, luzern = "canton-zg", "canton-lu"  # two cantons whose keys were stolen, their thieves logged in
    box.add_organ(zug, "canton")
    box.add_organ(luzern, "canton")
    thieves = {organ: paramiko_sftp(box, organ) for organ in (zug, luzern)}
    legitimate = paramiko_sftp(box, KV)

    def ended(session: Session) -> bool:
        try:
            session.listdir("/inbox")
        except (OSError, EOFError, paramiko.SSHException):
            return True
        return False

    try:
        assert not any(ended(session) for session in thieves.values())
        box.cli("organ", "disable", zug)  # the admin's two answers: the organ shut out, or its key removed
        [key] = json.loads(box.cli("organ", "ssh-key", "list", luzern, "--json").stdout)
        box.cli("organ", "ssh-key", "remove", luzern, key["fingerprint"])
        for organ, session in thieves.items():
            box.wait_for(lambda session=session: ended(session), 20, f"{organ}'s open session ended")
        assert not ended(legitimate), "the sessions nobody revoked go on"

        def told() -> dict[str, str]:
            events = json.loads(box.cli("audit", "list", "--action", "session_ended", "--json").stdout)
            return {e["organ_id"]: e["detail"] for e in events}

        reasons = box.wait_for(lambda: len(told()) == 2 and told(), 10, "both ends in the audit trail")
        assert reasons == {
            zug: "session ended: the organ was disabled",
            luzern: "session ended: its key was removed or limited elsewhere",
        }
    finally:
        for session in (*thieves.values(), legitimate):
            with contextlib.suppress(Exception):
                session.close()


def test_sessions_per_organ_are_capped(box: Sandbox) -> None:
    sessions = [paramiko_sftp(box, PK) for _ in range(3)]
    try:
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            extra = paramiko_sftp(box, PK)
            extra.listdir("/")
    finally:
        for s in sessions:
            s.close()


def test_host_keys_are_stable_and_their_fingerprints_published(box: Sandbox) -> None:
    shown = json.loads(box.cli("host-key", "fingerprints", "--json").stdout)
    assert {k["algorithm"] for k in shown} == {"ssh-ed25519", "ssh-rsa"}
    for row in shown:
        name = "ssh_host_ed25519_key" if row["algorithm"] == "ssh-ed25519" else "ssh_host_rsa_key"
        keygen = subprocess.run(
            ["ssh-keygen", "-lf", str(box.data_dir / "hostkeys" / f"{name}.pub")], capture_output=True, text=True
        ).stdout
        assert row["fingerprint"] in keygen
    box.stop()
    box.start()
    assert json.loads(box.cli("host-key", "fingerprints", "--json").stdout) == shown


def test_a_stranger_holding_connections_without_logging_in_cannot_lock_the_organs_out(tmp_path: Path) -> None:
    stranger = Sandbox(settings={"idle_timeout_seconds": 8})  # the door's rounds (and their audit) every 2 s
    sockets: list[socket.socket] = []
    try:
        stranger.init_pair(KV, PK)
        port = stranger.start()
        [door] = [p for p in harness.process_tree(stranger.process.pid) if _name(p) == "flam-sftp"]  # type: ignore[union-attr]
        # as if the door had reached its LimitNOFILE (65,536 under systemd: a night's work for a flood)
        subprocess.run(["prlimit", f"--pid={door}", "--nofile=400:400"], check=True)
        for _ in range(500):  # from another address, never a word of SSH
            with contextlib.suppress(OSError):
                sockets.append(socket.create_connection(("127.0.0.1", port), 3, source_address=("127.0.0.2", 0)))
        time.sleep(1)
        assert sum(_answered(s) for s in sockets) == 200, "max_startups_per_address; the rest reset at once"

        report = tmp_path / "report.json"
        report.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
        done = harness.openssh_sftp(port, KV, stranger.organs[KV].ssh_key, f"put {report} /outbox/\n")
        assert done.returncode == 0, done.stderr
        stranger.wait_transfer("report.json", "delivered")

        def refused() -> list[dict[str, Any]]:
            events = json.loads(stranger.cli("audit", "list", "--json").stdout)
            events = [e for e in events if e["action"] == "connections_refused"]
            return events if sum(int(e["detail"].split()[0]) for e in events) >= 300 else []

        events = stranger.wait_for(refused, 20, "the refusals in the audit trail")  # an event per address and round
        assert {(e["peer"], e["ok"]) for e in events} == {("127.0.0.2", False)}
        assert all(e["detail"].endswith(" connection(s) refused: too many not logged in yet") for e in events)
        assert len(events) < 10, "an event per round, not per refused connection"
        for s in sockets:
            s.close()
        sockets.clear()
        time.sleep(0.5)
        again = socket.create_connection(("127.0.0.1", port), 3, source_address=("127.0.0.2", 0))
        sockets.append(again)
        assert again.recv(64).startswith(b"SSH-2.0-"), "the address counts nothing once its connections are gone"
    finally:
        for s in sockets:
            s.close()
        stranger.close()


def _name(pid: int) -> str:
    """The process's name; "" for one that ended since it was listed (a gpg the gateway ran)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _answered(sock: socket.socket) -> bool:
    """Whether the door greeted ``sock`` with its SSH version (a refused connection is reset without a word)."""
    sock.settimeout(0.2)
    try:
        return sock.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def test_a_connection_that_offers_one_wrong_key_after_another_is_closed_after_six(box: Sandbox) -> None:
    stranger = f"probe-{os.getpid()}"
    keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(10)]
    asyncio.run(_offer_keys(box.port, stranger, keys))

    def failed() -> list[dict[str, Any]]:
        events = json.loads(box.cli("audit", "list", "--limit", "50", "--json").stdout)
        return [e for e in events if e["action"] == "login_failed" and repr(stranger) in e["detail"]]

    time.sleep(1)  # the door's audit buffer
    assert len(box.wait_for(failed, 20, "the failed logins")) == 6, "max_auth_tries, then the door hangs up"


def test_a_stranger_trying_keys_on_connection_after_connection_cannot_fill_the_audit_trail_or_the_log() -> None:
    flood = Sandbox(settings={"idle_timeout_seconds": 8})  # the door's rounds (and their audit) every 2 s
    try:
        flood.init_pair(KV, PK)
        port = flood.start()
        keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(6)]
        for _ in range(10):  # 60 failed logins in a second or so: it made 800 a second, each an event
            asyncio.run(_offer_keys(port, KV, keys))

        def accounted() -> tuple[int, list[int]] | None:
            events = json.loads(flood.cli("audit", "list", "--json").stdout)
            failed = [e["detail"] for e in events if e["action"] == "login_failed"]
            one_by_one = sum(detail.startswith(f"user '{KV}' key ") for detail in failed)
            counted = [int(detail.split()[0]) for detail in failed if "not recorded one by one" in detail]
            return (one_by_one, counted) if one_by_one + sum(counted) == 60 else None

        one_by_one, counted = flood.wait_for(accounted, 20, "every failed login accounted for")
        assert one_by_one <= 2 * 20 and len(counted) <= 2, "20 an address and round, the rest in one event"
        log = flood.log.read_text()
        assert "asyncssh" not in log and KV not in log, "asyncssh's lines for each connection (51 here before)"
    finally:
        flood.close()


async def _offer_keys(port: int | None, user: str, keys: list[asyncssh.SSHKey]) -> None:
    """Log in as ``user`` offering ``keys`` one after another, none of them known: refused."""
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        async with asyncssh.connect(
            "127.0.0.1", port, username=user, client_keys=keys, known_hosts=None, login_timeout=20
        ):
            pass
