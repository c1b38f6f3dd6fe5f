#!/usr/bin/env python3
"""flam-gateway benchmarks: each prints figures beside its baseline and writes them to a JSON file.

    python scripts/bench.py batch --count 1000 --runs 5      # a drop of N dossiers vs a gpg loop
    python scripts/bench.py all                              # every benchmark of the Performance section
    python scripts/bench.py batch --database-url postgresql+psycopg://postgres@127.0.0.1/test   # on PostgreSQL
    python scripts/bench.py sftp --dir /srv/flam-bench       # on the filesystem of your data directory
    python scripts/bench.py ledger                           # the ledger's part of a dossier alone (not in `all`)
    python scripts/bench.py soak --rounds 30                 # one gateway, many nights: RSS per process (not in `all`)
    python scripts/bench.py year                             # a year-old ledger: commands, a night (not in `all`)

Timings live here, never in tests. Every run uses the real `flam-gateway serve`, the real gpg and real clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway import samples
from gateway.config import OPENPGP_ENGINES, Settings
from gateway.folders import filesystem_of, new_transfer_id
from gateway.harness import Sandbox, fresh_schema, openssh_sftp, process_tree
from gateway.ledger.models import TransferData
from gateway.ledger.store import Ledger
from gateway.lifecycle import State

SENDER, RECIPIENT = "kv-bau-zh", "pk-bau-zh"
LEDGER = {"url": ""}  # --database-url: every gateway of the run gets a fresh schema in that database
PLACE = {"dir": ""}  # --dir: where each run makes its data directory, files and sshd folders (default: /tmp)
_SCHEMAS = contextlib.ExitStack()  # those schemas, dropped when the run ends


def two_organs(settings: dict[str, Any]) -> Sandbox:
    url = _SCHEMAS.enter_context(fresh_schema(LEDGER["url"])) if LEDGER["url"] else ""
    root = Path(tempfile.mkdtemp(prefix="fg-", dir=PLACE["dir"])) if PLACE["dir"] else None
    box = Sandbox(root, database_url=url, settings={"settle_seconds": 0.2, "rescan_seconds": 5, **settings})
    box.init_pair(SENDER, RECIPIENT)
    return box


def control_reports(folder: Path, count: int, pdf_bytes: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        doc = samples.make_dossier(SENDER, RECIPIENT, attachments=[("bericht.pdf", samples.make_pdf(pdf_bytes, i))])
        path = folder / f"report-{i:05d}.json"
        path.write_bytes(samples.dossier_bytes(doc))
        files.append(path)
    return files


def batch_once(count: int, pdf_bytes: int, workers: int, openpgp: str) -> dict[str, float]:
    """Drop ``count`` control reports at once; wall time until all are delivered and receipted."""
    box = two_organs({"workers": workers, "listen": "", "openpgp": openpgp})
    try:
        staged = control_reports(box.root / "staged", count, pdf_bytes)
        cpu_before = _children_cpu()
        box.start(listen="")
        outbox = box.folder(SENDER, "outbox")
        # Each timed phase starts with nothing left for the disk to write: neither the files generated for it nor
        # the last run's deletions are written back while it runs (without this the later runs of one `all` were
        # slower than the first: ratios 0.47, 0.54, 0.51 on /tmp and 0.48, 0.57, 0.63 on a journaled image).
        os.sync()
        start = time.perf_counter()
        for path in staged:
            path.rename(outbox / path.name)
        rows = box.wait_settled(count, timeout=3600)
        gateway = time.perf_counter() - start
        assert all(t.state == "delivered" for t in rows), {t.state for t in rows}
        box.stop()
        gateway_cpu = _children_cpu() - cpu_before
        loop_files = control_reports(box.root / "loop", count, pdf_bytes)
        os.sync()  # the same for the loop
        cpu_before = _children_cpu()
        baseline = gpg_loop(box, loop_files)
        loop_cpu = _children_cpu() - cpu_before
        return {
            "gateway_s": gateway,
            "gpg_loop_s": baseline,
            "ratio": gateway / baseline,
            "gateway_cpu_ms_per_dossier": gateway_cpu * 1000 / count,
            "gpg_loop_cpu_ms_per_file": loop_cpu * 1000 / count,
        }
    finally:
        box.close()


def _children_cpu() -> float:
    """User + system CPU seconds of every child process this process has waited for (and their children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants, living or already waited for."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def gpg_loop(box: Sandbox, files: list[Path]) -> float:
    """The baseline: a plain sequential shell loop of `gpg --sign --encrypt` over the same files."""
    home = box.data_dir / "gnupg"
    recipient = box.organs[RECIPIENT].fingerprint
    script = (
        f'for f in "$@"; do gpg --homedir {home} --batch --yes --trust-model always '
        f'-r {recipient} --sign --encrypt --output "$f.pgp" "$f"; done'
    )
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script, "loop", *map(str, files)], check=True)
    return time.perf_counter() - start


def run_batch(args: argparse.Namespace) -> dict[str, Any]:
    runs = [batch_once(args.count, args.pdf_bytes, args.workers, args.openpgp) for _ in range(args.runs)]
    for i, r in enumerate(runs, 1):
        print(
            f"batch run {i}: gateway {r['gateway_s']:.2f} s, gpg loop {r['gpg_loop_s']:.2f} s, ratio {r['ratio']:.2f}; "
            f"CPU per dossier: gateway {r['gateway_cpu_ms_per_dossier']:.1f} ms (whole serve tree, gpg included), "
            f"gpg loop {r['gpg_loop_cpu_ms_per_file']:.1f} ms"
        )
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"batch median of {len(runs)} (openpgp {args.openpgp}, ledger {_ledger_name()}): "
        f"{args.count} dossiers in {summary['gateway_s']:.2f} s "
        f"({args.count / summary['gateway_s']:.0f}/s); gpg loop {summary['gpg_loop_s']:.2f} s; "
        f"ratio {summary['ratio']:.2f} (target ≤ 0.5)"
    )
    return {"count": args.count, "pdf_bytes": args.pdf_bytes, "openpgp": args.openpgp, "runs": runs, "median": summary}


def run_ledger(args: argparse.Namespace) -> dict[str, float]:
    """The ledger's part of ``--count`` dossiers, in this process on one thread: each claimed, recorded through
    VALIDATED to ENCRYPTED, then DELIVERED with its receipt, marked written by the next claim (what a worker asks
    of the ledger for a dossier). CPU and wall time per dossier; no files, no crypto."""
    url = _SCHEMAS.enter_context(fresh_schema(LEDGER["url"])) if LEDGER["url"] else ""
    url = url or f"sqlite:///{tempfile.mkdtemp(prefix='fg-', dir=PLACE['dir'] or None)}/ledger.db"
    ledger = Ledger(url)
    now = datetime.now(UTC)
    for organ, kind in ((SENDER, "control_body"), (RECIPIENT, "joint_committee")):
        ledger.add_organ(organ, kind, organ, now)
    arrivals = [TransferData.arrival(new_transfer_id(), SENDER, f"r{i}.json", now) for i in range(args.count)]
    for i in range(0, args.count, 100):
        ledger.receive(arrivals[i : i + 100])
    written: list[tuple[str, int]] = []
    cpu, start = time.process_time(), time.perf_counter()
    for i in range(args.count):
        now = datetime.now(UTC)
        claimed = ledger.claim("bench:0", now, timedelta(minutes=5), written)
        assert claimed is not None
        tid = claimed.transfer.id
        envelope = {"message_id": str(uuid.uuid4()), "dossier_id": f"d-{i}", "recipient_id": RECIPIENT, "form": "json"}
        ledger.transition(tid, State.RECEIVED, State.ENCRYPTED, now, via=[State.VALIDATED], **envelope)
        moved = ledger.transition(tid, State.ENCRYPTED, State.DELIVERED, now, release=True, delivered_name=f"{i}.pgp")
        assert moved.receipt is not None
        written = [(tid, moved.receipt.status_code)]
    ledger.mark_written(written)
    figures = {
        "cpu_ms_per_dossier": (time.process_time() - cpu) * 1000 / args.count,
        "wall_ms_per_dossier": (time.perf_counter() - start) * 1000 / args.count,
    }
    ledger.close()
    print(
        f"ledger ({_ledger_name()}) alone, {args.count} dossiers on one thread: CPU "
        f"{figures['cpu_ms_per_dossier']:.2f} ms per dossier, wall {figures['wall_ms_per_dossier']:.2f} ms"
    )
    return figures


def _ledger_name() -> str:
    return LEDGER["url"].split(":", 1)[0].split("+", 1)[0] if LEDGER["url"] else "sqlite"


async def _upload_all(
    port: int, key: Path, organ: str, files: list[tuple[str, bytes]], pace: float | None = None
) -> dict[str, float]:
    """Upload files over one asyncssh SFTP session; returns name -> monotonic time the close returned."""
    import asyncssh

    done: dict[str, float] = {}
    connect = asyncssh.connect("127.0.0.1", port, username=organ, client_keys=[str(key)], known_hosts=None)
    async with connect as conn, conn.start_sftp_client() as sftp:
        start = time.monotonic()
        for i, (name, data) in enumerate(files):
            if pace:
                await asyncio.sleep(max(0.0, start + i * pace - time.monotonic()))
            async with sftp.open(f"/outbox/{name}", "wb") as fh:
                await fh.write(data)
            done[name] = time.monotonic()
    return done


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    """A steady rate of dossiers over SFTP: time from upload-close to the file in the recipient's inbox."""
    box = two_organs({"workers": args.workers, "settle_seconds": 0.2})
    try:
        port = box.start()
        count = int(args.rate * args.seconds)
        files, names = [], {}
        for i in range(count):
            doc = samples.make_dossier(SENDER, RECIPIENT, attachments=[("a.pdf", samples.make_pdf(50_000, i))])
            files.append((f"lat-{i:05d}.json", samples.dossier_bytes(doc)))
            names[f"{SENDER}_{doc['envelope']['message_id']}.json.pgp"] = f"lat-{i:05d}.json"
        seen: dict[str, float] = {}
        inbox = box.folder(RECIPIENT, "inbox")
        observer = _watch(inbox, lambda name: seen.setdefault(names.get(name, name), time.monotonic()))
        closed = asyncio.run(_upload_all(port or 0, box.organs[SENDER].ssh_key, SENDER, files, 1 / args.rate))
        box.wait_settled(count, timeout=600)
        observer.stop()
        lat = sorted((seen[n] - closed[n]) * 1000 for n in closed if n in seen)
        q = statistics.quantiles(lat, n=100)
        result = {
            "count": count,
            "rate_per_s": args.rate,
            "p50_ms": q[49],
            "p95_ms": q[94],
            "p99_ms": q[98],
            "max_ms": lat[-1],
            "missing": count - len(lat),
        }
        print(
            f"latency at {args.rate}/s for {args.seconds} s over SFTP: p50 {q[49]:.0f} ms, p95 {q[94]:.0f} ms, "
            f"p99 {q[98]:.0f} ms (target p99 ≤ 200 ms), max {lat[-1]:.0f} ms"
        )
        return result
    finally:
        box.close()


def _watch(folder: Path, on_new: Any) -> Any:
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Seen(FileSystemEventHandler):
        def on_moved(self, event: Any) -> None:
            on_new(Path(os.fsdecode(event.dest_path)).name)

        def on_created(self, event: Any) -> None:
            on_new(Path(os.fsdecode(event.src_path)).name)

    observer = Observer()
    observer.schedule(Seen(), str(folder))
    observer.start()
    return observer


def _openssh_put(port: int, key: Path, user: str, commands: str) -> float:
    start = time.perf_counter()
    done = openssh_sftp(port, user, key, commands, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start


def _sshd(root: Path, key: Path) -> tuple[subprocess.Popen[bytes], int]:
    """OpenSSH's own sshd with internal-sftp on a free port, for the baseline."""
    import socket

    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host")], check=True)
    (root / "authorized_keys").write_text(Path(str(key) + ".pub").read_text())
    (root / "authorized_keys").chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        f"StrictModes no\nUsePAM no\nPidFile {root / 'sshd.pid'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nSubsystem sftp internal-sftp\nForceCommand internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.DEVNULL)
    time.sleep(1)
    return proc, port


def _plain_asyncssh(root: Path, key: Path) -> int:
    """asyncssh's own SFTPServer on a thread of this process, with the door's event loop and algorithms and
    nothing of the gateway (no jail, no spare files, no fsync, no watcher, no audit): the floor of the stack."""
    import asyncssh
    import uvloop

    from gateway.sftp.server import TRANSPORT

    loop = uvloop.new_event_loop()
    server = loop.run_until_complete(
        asyncssh.create_server(
            asyncssh.SSHServer,
            "127.0.0.1",
            0,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            authorized_client_keys=str(key) + ".pub",
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=os.fsencode(root)),
            **TRANSPORT,
        )
    )
    threading.Thread(target=loop.run_forever, name="plain-asyncssh", daemon=True).start()
    return server.sockets[0].getsockname()[1]


@dataclass(frozen=True)
class _SftpServer:
    """A server of the SFTP benchmark: where its client logs in and puts, and what is measured on it."""

    port: int
    user: str
    folder: str  # where uploads go, as the client names it ("" for the server's start folder)
    local: Path  # the same folder on this machine, emptied after each run
    pid: int | None = None  # for the CPU split (None: a thread of this process, not counted)
    put: str = "put"  # `put -f`: the client asks for an fsync of each file


def run_sftp(args: argparse.Namespace) -> dict[str, Any]:
    """One 1 GiB upload and 1,000 × 20 KB in one session with the OpenSSH client: gateway vs sshd.

    Two references run beside them: sshd with the client's fsync of each file (`put -f`, both uploads), and
    asyncssh's own SFTPServer with nothing of the gateway (the floor of the stack). ``--sftp-rounds`` rounds (default
    5), the servers' order reversed every other round (file creation on an ext4 without a journal slows for
    minutes after mass deletions, which would favour whichever server goes later), the disk synced before each
    timed upload (no server pays for the writeback of an earlier benchmark or round); medians.
    """
    box = two_organs({"workers": args.workers})
    try:
        port = box.start() or 0
        serve_pid = box.process.pid  # type: ignore[union-attr]
        key = box.organs[SENDER].ssh_key
        big = box.root / "big.part"
        with open(big, "wb") as fh:
            for _ in range(args.big_mib):
                fh.write(os.urandom(1 << 20))
        small_dir = box.root / "small"
        small_dir.mkdir()
        for i in range(args.small_count):
            (small_dir / f"f{i:04d}.part").write_bytes(os.urandom(20_000))
        target, plain = box.root / "sshd-target", box.root / "plain-target"
        target.mkdir()
        plain.mkdir()
        sshd, sshd_port = _sshd(box.root / "sshd", key)
        servers = {
            "gateway": _SftpServer(port, SENDER, "/outbox", box.folder(SENDER, "outbox"), serve_pid),
            "sshd": _SftpServer(sshd_port, "root", str(target), target, sshd.pid),
            "sshd_fsync": _SftpServer(sshd_port, "root", str(target), target, put="put -f"),
            "plain_asyncssh": _SftpServer(_plain_asyncssh(plain, key), "bench", "", plain),
        }
        rounds: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
        try:
            for r in range(args.sftp_rounds):
                for label in list(servers) if r % 2 == 0 else reversed(servers):
                    rounds[label].append(_sftp_round(servers[label], key, big, small_dir, args))
        finally:
            sshd.terminate()
        results: dict[str, Any] = {
            label: {**{key: statistics.median(run[key] for run in runs) for key in runs[0]}, "rounds": runs}
            for label, runs in rounds.items()
        }
        g, o = results["gateway"], results["sshd"]
        results["ratio_big"] = g["big_mb_s"] / o["big_mb_s"]
        results["ratio_small"] = g["small_files_s"] / o["small_files_s"]
        results["ratio_big_fsync"] = g["big_mb_s"] / results["sshd_fsync"]["big_mb_s"]
        results["ratio_small_fsync"] = g["small_files_s"] / results["sshd_fsync"]["small_files_s"]
        floor = results["plain_asyncssh"]
        results["ratio_big_plain_asyncssh"] = floor["big_mb_s"] / o["big_mb_s"]
        results["ratio_small_plain_asyncssh"] = floor["small_files_s"] / o["small_files_s"]
        each = "; ".join(
            f"round {i + 1}: {ours['big_mb_s']:.0f}/{theirs['big_mb_s']:.0f} MB/s, "
            f"{ours['small_files_s']:.0f}/{theirs['small_files_s']:.0f} files/s"
            for i, (ours, theirs) in enumerate(zip(rounds["gateway"], rounds["sshd"], strict=True))
        )
        print(f"sftp gateway/sshd {each}")
        print(
            f"sftp {args.big_mib} MiB (median of {args.sftp_rounds}): gateway {g['big_mb_s']:.0f} MB/s, "
            f"sshd {o['big_mb_s']:.0f} MB/s, ratio {results['ratio_big']:.2f} (target ≥ 1.0)"
        )
        print(
            f"sftp {args.small_count} × 20 KB (median of {args.sftp_rounds}): gateway {g['small_files_s']:.0f} "
            f"files/s, sshd {o['small_files_s']:.0f} files/s, ratio {results['ratio_small']:.2f} (target ≥ 1.0); "
            f"CPU per file (medians): gateway {g['small_server_cpu_ms_per_file']:.2f} ms (the whole serve tree, "
            f"watcher included) + client {g['small_client_cpu_ms_per_file']:.2f} ms, sshd "
            f"{o['small_server_cpu_ms_per_file']:.2f} ms + client {o['small_client_cpu_ms_per_file']:.2f} ms"
        )
        durable = results["sshd_fsync"]
        print(
            "sftp reference: sshd with the client's fsync of each file (`put -f`; the gateway always makes an upload "
            f"durable before it answers the close): {args.big_mib} MiB {durable['big_mb_s']:.0f} MB/s, gateway/that "
            f"{results['ratio_big_fsync']:.2f}; {args.small_count} × 20 KB {durable['small_files_s']:.0f} files/s, "
            f"gateway/that {results['ratio_small_fsync']:.2f}"
        )
        print(
            "sftp, the floor of the stack: asyncssh's own SFTPServer with nothing of the gateway (no jail, no fsync, "
            f"no watcher): {args.big_mib} MiB {floor['big_mb_s']:.0f} MB/s, {results['ratio_big_plain_asyncssh']:.2f} "
            f"× sshd; {args.small_count} × 20 KB {floor['small_files_s']:.0f} files/s, "
            f"{results['ratio_small_plain_asyncssh']:.2f} × sshd"
        )
        return results
    finally:
        box.close()


def _sftp_round(
    server: _SftpServer, key: Path, big: Path, small_dir: Path, args: argparse.Namespace
) -> dict[str, float]:
    """One round on one server: the big upload, then the small files with the CPU they cost."""
    cd = f"cd {server.folder}\n" if server.folder else ""
    os.sync()  # no server pays for the writeback of an earlier benchmark, round or generated file
    big_s = _openssh_put(server.port, key, server.user, f"{cd}{server.put} {big}\n")
    record = {"big_mb_s": args.big_mib * 1.048576 / big_s}
    os.sync()
    server_before, client_before = _tree_cpu(server.pid) if server.pid else 0.0, _children_cpu()
    small_s = _openssh_put(server.port, key, server.user, f"{cd}lcd {small_dir}\n{server.put} *.part\n")
    time.sleep(0.5)  # sshd reaps the session's process, and the gateway's watcher catches up
    record["small_files_s"] = args.small_count / small_s
    if server.pid:
        record["small_server_cpu_ms_per_file"] = (_tree_cpu(server.pid) - server_before) * 1000 / args.small_count
        record["small_client_cpu_ms_per_file"] = (_children_cpu() - client_before) * 1000 / args.small_count
    for path in server.local.iterdir():
        path.unlink()
    return record


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of `serve` while it validates, encrypts and delivers one large package."""
    import hashlib
    import zipfile

    box = two_organs({"workers": args.workers, "openpgp": args.openpgp})  # as in production: the SFTP door too
    try:
        package = box.root / "huge.zip"
        digest, size = hashlib.sha256(), args.package_mib << 20
        with zipfile.ZipFile(package, "w", zipfile.ZIP_STORED) as zf:
            with zf.open("scan.pdf", "w", force_zip64=True) as fh:
                chunk = b"%PDF-1.7\n" + os.urandom((1 << 20) - 9)
                for i in range(args.package_mib):
                    block = chunk if i == 0 else os.urandom(1 << 20)
                    fh.write(block)
                    digest.update(block)
            doc = samples.make_dossier(SENDER, RECIPIENT, embed=False)
            doc["dossier"]["attachments"] = [
                {"filename": "scan.pdf", "media_type": "application/pdf", "size": size, "sha256": digest.hexdigest()}
            ]
            zf.writestr("dossier.json", samples.dossier_bytes(doc))
        box.start()
        pid = box.process.pid  # type: ignore[union-attr]
        time.sleep(2)  # settled after start-up
        at_rest = _TreeMemory(pid)
        at_rest.start()
        time.sleep(1)
        at_rest.stop()
        sampler = _TreeMemory(pid)
        sampler.start()
        start = time.perf_counter()
        package.rename(box.folder(SENDER, "outbox") / "huge.zip")
        rows = box.wait_settled(1, timeout=3600)
        seconds = time.perf_counter() - start
        sampler.stop()
        tree = process_tree(pid)  # gpg has exited by now; its peak was sampled
        peak_rss_kib = max([*(_status_kib(p, "VmHWM") for p in tree), sampler.peak_rss_kib])
        processes = len(tree)
        print(
            f"memory: {args.package_mib} MiB package {rows[0].state} in {seconds:.1f} s; peak RSS of serve "
            f"{peak_rss_kib / 1024:.0f} MiB = {peak_rss_kib * 1024 / 1e6:.0f} MB (the largest VmHWM of its processes, "
            f"what `/usr/bin/time -v` prints; target ≤ 100 MB); the {processes} processes together (PSS, sampled "
            f"every 50 ms) {sampler.peak_pss_kib / 1024:.0f} MiB at the peak, "
            f"{at_rest.peak_pss_kib / 1024:.0f} MiB at rest before the drop"
        )
        return {
            "package_mib": args.package_mib,
            "state": rows[0].state,
            "seconds": seconds,
            "peak_rss_mib": peak_rss_kib / 1024,
            "peak_tree_pss_mib": sampler.peak_pss_kib / 1024,
            "rest_tree_pss_mib": at_rest.peak_pss_kib / 1024,
            "processes": processes,
        }
    finally:
        box.close()


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """One gateway for ``--rounds`` nights of ``--count`` dossiers, each delivered and picked up; after each night
    the RSS of every process of `serve`, and its peak during the night, so that growth over a long run shows."""
    box = two_organs({"workers": args.workers, "listen": "127.0.0.1:0", "openpgp": args.openpgp})
    try:
        box.start()
        serve = box.process.pid  # type: ignore[union-attr]
        processes = process_tree(serve)
        outbox, inbox = box.folder(SENDER, "outbox"), box.folder(RECIPIENT, "inbox")
        nights: list[dict[str, Any]] = [{"rss_mib": [_status_kib(p, "VmRSS") / 1024 for p in processes]}]
        print("soak at start: RSS MiB (serve, then its children) " + " ".join(f"{m:.1f}" for m in nights[0]["rss_mib"]))
        for night in range(1, args.rounds + 1):
            staged = control_reports(box.root / f"night-{night}", args.count, args.pdf_bytes)
            for pid in processes:
                _reset_peak(pid)
            start = time.perf_counter()
            for path in staged:
                path.rename(outbox / path.name)
            box.wait_for(lambda: len(os.listdir(inbox)) >= args.count, 3600, "the night's deliveries")
            delivered = time.perf_counter() - start
            for path in inbox.iterdir():
                path.unlink()  # the recipient picks everything up: 110 for each
            box.wait_for(
                lambda n=night * args.count: (
                    box.ledger.count_by_state().get("fetched", 0) >= n and not box.ledger.due_receipts()
                ),
                3600,
                "the pick-ups",
            )
            rss = [_status_kib(p, "VmRSS") / 1024 for p in processes]
            peak = [_status_kib(p, "VmHWM") / 1024 for p in processes]
            nights.append({"delivered_s": delivered, "rss_mib": rss, "peak_rss_mib": peak})
            print(
                f"soak night {night}: {args.count} delivered in {delivered:.1f} s, all picked up; "
                "RSS MiB "
                + " ".join(f"{m:.1f}" for m in rss)
                + "; the night's peak "
                + " ".join(f"{m:.1f}" for m in peak)
            )
        return {"count": args.count, "nights": nights}
    finally:
        box.close()


def run_year(args: argparse.Namespace) -> dict[str, Any]:
    """The ledger a year of nights leaves (``--nights`` of ``--count`` dossiers, copied from a real night of 100):
    what the admin's commands and a maintenance round cost on it (wall time, peak RSS), and the next night's
    batch on it beside the same batch on a new ledger."""
    from gateway.config import load_settings
    from gateway.history import age_ledger
    from gateway.service import Gateway

    box = two_organs({"workers": args.workers, "listen": "", "openpgp": args.openpgp})
    try:
        box.start(listen="")
        inbox = box.folder(RECIPIENT, "inbox")
        _night(box, control_reports(box.root / "template", 100, 2_000))
        for path in inbox.iterdir():
            path.unlink()  # picked up: 110 for each
        box.wait_for(lambda: box.ledger.count_by_state() == {"fetched": 100} and not box.ledger.due_receipts())
        assert not any(box.folder(SENDER, "outbox").iterdir())
        box.stop()
        start = time.perf_counter()
        history = age_ledger(box.ledger, args.nights, args.count)
        box.close_ledger()
        fill = time.perf_counter() - start
        database = box.data_dir / "ledger.sqlite3"
        size = f", {database.stat().st_size / 1e6:.0f} MB" if database.exists() else ""
        print(
            f"year: ledger aged by {history.nights} nights in {fill:.0f} s: {history.transfers} transfers, "
            f"{history.receipts} receipts, {history.events} audit events{size}"
        )
        message_id = box.ledger.transfers(limit=1)[0].message_id or ""
        box.close_ledger()
        commands = {}
        for argv in (
            ("fsck",),
            ("status",),
            ("audit", "verify"),
            ("transfers", "list"),
            ("transfers", "show", message_id),
            ("transfers", "stats", "--since", f"{datetime.now(UTC) - timedelta(days=400):%Y-%m-%d}"),  # the year
            ("audit", "list"),
            ("audit", "list", "--action", "login_failed"),  # none in the year: every event read
            ("audit", "list", "--action", "upload", "--since", f"{datetime.now(UTC) - timedelta(days=30):%Y-%m-%d}"),
            ("purge",),
        ):
            name = " ".join(argv[:4] if argv[:2] == ("audit", "list") else argv[:2])
            commands[name] = figures = _timed_cli(box, argv)
            print(
                f"year: `{name}` {figures['seconds']:.1f} s, peak RSS {figures['peak_mb']:.0f} MB, "
                f"exit {figures['exit']}: {figures['said'][:100]}"
            )
        gateway = Gateway(load_settings(env=box.env))
        rounds = {name: _median_ms(task) for name, task in gateway.maintenance().items()}
        gateway.ledger.close()
        print("year: one maintenance round, ms: " + ", ".join(f"{name} {ms:.1f}" for name, ms in rounds.items()))
        staged = control_reports(box.root / "night", args.count, args.pdf_bytes)
        start = time.perf_counter()
        box.start(listen="")
        ready = time.perf_counter() - start
        on_year = _night(box, staged)
        box.stop()
    finally:
        box.close()
    box = two_organs({"workers": args.workers, "listen": "", "openpgp": args.openpgp})
    try:
        staged = control_reports(box.root / "night", args.count, args.pdf_bytes)
        box.start(listen="")
        fresh = _night(box, staged)
    finally:
        box.close()
    print(
        f"year: serve ready in {ready:.1f} s; a night of {args.count} dossiers on the year-old ledger "
        f"{on_year:.2f} s, on a new ledger {fresh:.2f} s"
    )
    return {
        "nights": history.nights,
        "transfers": history.transfers,
        "receipts": history.receipts,
        "events": history.events,
        "fill_s": fill,
        "commands": commands,
        "maintenance_ms": rounds,
        "ready_s": ready,
        "night_on_year_s": on_year,
        "night_fresh_s": fresh,
    }


def _night(box: Sandbox, staged: list[Path]) -> float:
    """Move ``staged`` into the sender's outbox at once; seconds until each is delivered and receipted (watched
    on the inbox and the receipts due: a poll that counted a year of transfers would compete for the CPU)."""
    outbox, inbox = box.folder(SENDER, "outbox"), box.folder(RECIPIENT, "inbox")
    expected = len(os.listdir(inbox)) + len(staged)
    os.sync()
    start = time.perf_counter()
    for path in staged:
        path.rename(outbox / path.name)
    box.wait_for(lambda: len(os.listdir(inbox)) >= expected, 3600, "the night's deliveries")
    box.wait_for(lambda: not box.ledger.due_receipts(), 600, "the night's receipts")
    return time.perf_counter() - start


def _timed_cli(box: Sandbox, argv: tuple[str, ...]) -> dict[str, Any]:
    """Run one CLI command on ``box``: wall seconds and peak RSS (MB) of the command alone, its exit code and the
    last line it printed."""
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "gateway", *argv], env=box.env, stdout=output, stderr=output)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        output.seek(0)
        said = (output.read().strip().splitlines() or [""])[-1].strip()
    exit_code = os.waitstatus_to_exitcode(status)
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss * 1024 / 1e6, "exit": exit_code, "said": said}


def _median_ms(task: Any, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        task()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _reset_peak(pid: int) -> None:
    """Start ``pid``'s peak RSS (VmHWM) afresh from its current RSS."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kib(pid: int, field: str) -> int:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1])


class _TreeMemory:
    """Samples the proportional set size of a process tree (shared pages of forked children counted once)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_pss_kib, self.peak_rss_kib = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = 0
            for p in process_tree(self.pid):
                try:
                    rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
                except OSError:
                    continue
                pss = int(next(x for x in rollup.splitlines() if x.startswith("Pss:")).split()[1])
                total += pss
                self.peak_rss_kib = max(self.peak_rss_kib, _status_kib(p, "VmRSS"))
            self.peak_pss_kib = max(self.peak_pss_kib, total)


def run_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    """Many simultaneous SFTP sessions, each uploading a few dossiers: failures and total time."""
    box = two_organs({"workers": args.workers, "max_sessions_per_organ": args.sessions + 10})
    try:
        port = box.start() or 0
        batches = [
            [
                (f"s{s:03d}-{i}.json", samples.dossier_bytes(samples.make_dossier(SENDER, RECIPIENT)))
                for i in range(args.per_session)
            ]
            for s in range(args.sessions)
        ]

        async def everyone() -> list[Any]:
            return await asyncio.gather(
                *(_upload_all(port, box.organs[SENDER].ssh_key, SENDER, b) for b in batches), return_exceptions=True
            )

        start = time.perf_counter()
        outcomes = asyncio.run(everyone())
        uploaded = time.perf_counter() - start
        failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        expected = args.sessions * args.per_session - len(failures) * args.per_session
        rows = box.wait_settled(expected, timeout=3600)
        total = time.perf_counter() - start
        delivered = sum(t.state == "delivered" for t in rows)
        print(
            f"concurrency: {args.sessions} sessions × {args.per_session} dossiers: {len(failures)} failed sessions, "
            f"uploads done in {uploaded:.1f} s, all {delivered} delivered in {total:.1f} s"
        )
        return {
            "sessions": args.sessions,
            "per_session": args.per_session,
            "failures": failures,
            "upload_s": uploaded,
            "total_s": total,
            "delivered": delivered,
        }
    finally:
        box.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "what", choices=["batch", "latency", "sftp", "memory", "concurrency", "all", "ledger", "soak", "year"]
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--pdf-bytes", type=int, default=50_000)
    parser.add_argument(
        "--runs", type=int, default=3, help="batch runs, each against its own gpg loop; the median is judged"
    )
    defaults = Settings()
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker loops (default: the gateway's)")
    parser.add_argument("--openpgp", choices=OPENPGP_ENGINES, default=defaults.openpgp, help="the OpenPGP engine")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--sftp-rounds", type=int, default=5)
    parser.add_argument("--package-mib", type=int, default=2048)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30, help="soak: nights of --count dossiers")
    parser.add_argument("--nights", type=int, default=366, help="year: nights of --count dossiers in the ledger")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--database-url", default="", help="a PostgreSQL database for the ledgers (default: SQLite)")
    parser.add_argument(
        "--dir", type=Path, help="where to make data directories and files (default: /tmp): the gateway's filesystem"
    )
    args = parser.parse_args()
    LEDGER["url"] = args.database_url
    PLACE["dir"] = str(args.dir or "")
    # Creating files and fsync cost very different amounts on ext4 with and without a journal (without one, ext4
    # scans recently freed inodes at every creation; with one, each fsync is a journal commit): say which it was.
    place = args.dir or Path("/tmp")
    filesystem = f"{filesystem_of(place)} at {place}"
    print(f"data filesystem: {filesystem}")
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "filesystem": filesystem},
        "ledger": _ledger_name(),
    }
    with _SCHEMAS:
        for name, run in (
            ("batch", run_batch),
            ("latency", run_latency),
            ("sftp", run_sftp),
            ("memory", run_memory),
            ("concurrency", run_concurrency),
        ):
            if args.what in (name, "all"):
                results[name] = run(args)
        if args.what == "ledger":
            results["ledger_path"] = run_ledger(args)
        if args.what == "soak":
            results["soak"] = run_soak(args)
        if args.what == "year":
            results["year"] = run_year(args)
    print_targets(results)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"results written to {args.json}")


def print_targets(results: dict[str, Any]) -> None:
    """The issue's targets as a table: each benchmark that ran, its figure beside its baseline, met or not."""
    from rich.console import Console
    from rich.table import Table

    rows: list[tuple[str, str, str, bool]] = []
    if batch := results.get("batch"):
        m = batch["median"]
        figure = f"{m['gateway_s']:.2f} s vs gpg loop {m['gpg_loop_s']:.2f} s = {m['ratio']:.2f}"
        rows.append((f"batch of {batch['count']} ({batch['openpgp']})", figure, "≤ 0.5", m["ratio"] <= 0.5))
    if latency := results.get("latency"):
        figure = f"p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms"
        rows.append(("latency at 10/s", figure, "p99 ≤ 200 ms", latency["p99_ms"] <= 200 and not latency["missing"]))
    if sftp := results.get("sftp"):
        g, o = sftp["gateway"], sftp["sshd"]
        big = (
            f"{g['big_mb_s']:.0f} vs sshd {o['big_mb_s']:.0f} MB/s = {sftp['ratio_big']:.2f} "
            f"(vs sshd `put -f` {sftp['sshd_fsync']['big_mb_s']:.0f}: {sftp['ratio_big_fsync']:.2f})"
        )
        small = (
            f"{g['small_files_s']:.0f} vs sshd {o['small_files_s']:.0f} files/s = {sftp['ratio_small']:.2f} "
            f"(vs sshd `put -f` {sftp['sshd_fsync']['small_files_s']:.0f}: {sftp['ratio_small_fsync']:.2f})"
        )
        rows.append(("SFTP one big file", big, "≥ 1.0", sftp["ratio_big"] >= 1.0))
        rows.append(("SFTP small files", small, "≥ 1.0", sftp["ratio_small"] >= 1.0))
    if memory := results.get("memory"):
        rss_mb = memory["peak_rss_mib"] * 1.048576
        figure = (
            f"peak RSS {rss_mb:.0f} MB; all {memory['processes']} processes (PSS) "
            f"{memory['peak_tree_pss_mib']:.0f} MiB (at rest {memory['rest_tree_pss_mib']:.0f})"
        )
        rows.append((f"{memory['package_mib']} MiB package", figure, "peak RSS ≤ 100 MB", rss_mb <= 100))
    if concurrency := results.get("concurrency"):
        failed = len(concurrency["failures"])
        figure = f"{failed} failed; uploads {concurrency['upload_s']:.1f} s, delivered {concurrency['total_s']:.1f} s"
        rows.append((f"{concurrency['sessions']} sessions", figure, "0 failures", failed == 0))
    if not rows:  # `ledger` alone: no target of the issue
        return
    table = Table(title=f"targets (ledger: {results['ledger']})")
    for column in ("benchmark", "gateway vs baseline", "target", "met"):
        table.add_column(column)
    for name, figure, target, met in rows:
        table.add_row(name, figure, target, "yes" if met else "no")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
