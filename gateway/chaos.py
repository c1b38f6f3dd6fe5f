"""Chaos: kill -9 `flam-gateway serve`, or cut the power of its data dir, at random moments during a batch, and
check every invariant.

Used by tests/test_chaos.py and tests/test_power_cut.py (bounded) and scripts/chaos (long runs). After each restart
and at the end: every dropped file ends delivered exactly once or rejected with one receipt, no half files in any
inbox, no spool or temp files left, and `flam-gateway fsck` finds the ledger and the disk in agreement. A power cut
can also undo the drop itself (the exporting software's rename into the outbox): such a file is back in the staging
folder after the reboot, has never entered the outbox, and is dropped again later.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway import samples
from gateway.crypto import Keyring
from gateway.errors import GatewayFault
from gateway.folders import fsync_tree
from gateway.harness import Sandbox
from gateway.ledger.models import Transfer
from gateway.powercut import Ext4Image, power_cut

SENDER, RECIPIENT = "kv-bau-zh", "pk-bau-zh"
_RECEIPT = re.compile(r"_(\d{3})_([0-9a-f]{32})\.receipt\.json$")


@dataclass
class ChaosReport:
    dossiers: int
    crashes: int
    crash: str  # "kills" or "power cuts"
    delivered: int = 0
    rejected: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def stage(folder: Path, count: int, seed: int, bad_every: int = 10) -> dict[str, bool]:
    """Write ``count`` dossiers to ``folder``; returns name -> whether it is valid (every n-th is not)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i in range(count):
        doc = samples.make_dossier(SENDER, RECIPIENT, attachments=[("a.pdf", samples.make_pdf(2_000 + i, seed + i))])
        valid = i % bad_every != bad_every - 1
        if not valid:
            doc["dossier"]["employer"]["uid"] = "CHE-116.281.711"
        name = f"chaos-{i:05d}.json"
        (folder / name).write_bytes(samples.dossier_bytes(doc))
        expected[name] = valid
    return expected


def check_consistent(box: Sandbox, expected: dict[str, bool], final: bool) -> list[str]:
    """Invariants that hold after any restart; with ``final``, also that every dossier has ended."""
    problems: list[str] = []
    transfers = box.transfers()
    by_name = Counter(t.file_name for t in transfers)
    problems += [f"{name} recorded {n} times" for name, n in by_name.items() if n > 1]
    known = {(t.recipient_id, f"{t.sender_id}_{t.message_id}.json.pgp"): t for t in transfers if t.message_id}
    inbox = sorted(box.folder(RECIPIENT, "inbox").iterdir())
    for path in inbox:
        t = known.get((RECIPIENT, path.name))
        if t is None or t.state not in ("encrypted", "delivered"):
            problems.append(f"inbox file {path.name} without an encrypted/delivered transfer")
    receipts = Counter()
    for path in box.folder(SENDER, "receipts").iterdir():
        match = _RECEIPT.search(path.name)
        if match is None:
            problems.append(f"stray file in receipts: {path.name}")
            continue
        receipts[match.group(2)] += 1
        json.loads(path.read_text())  # never half written
    states = {t.id: t.state for t in transfers}
    for tid, count in receipts.items():
        if count != 1 or states.get(tid) not in ("delivered", "rejected"):
            problems.append(f"transfer {tid} ({states.get(tid)}) has {count} receipt(s)")
    if not final:
        return problems
    rows_by_name: dict[str, list[Transfer]] = {}
    for t in transfers:
        rows_by_name.setdefault(t.file_name, []).append(t)
    for name, valid in expected.items():
        rows = rows_by_name.get(name, [])
        want = "delivered" if valid else "rejected"
        if len(rows) != 1 or rows[0].state != want:
            problems.append(f"{name}: expected {want}, ledger has {[t.state for t in rows]}")
        elif receipts[rows[0].id] != 1:
            problems.append(f"{name}: {receipts[rows[0].id]} receipts")
    if len(inbox) != sum(expected.values()):
        problems.append(f"inbox holds {len(inbox)} files for {sum(expected.values())} valid dossiers")
    problems += _not_as_sent(box, inbox, known)
    leftovers = [p for p in (box.data_dir / "spool").rglob("*") if p.is_file()]
    leftovers += [p for p in box.folder(SENDER, "outbox").iterdir()]
    problems += [f"left behind: {p}" for p in leftovers]
    fsck = box.cli("fsck", "--json", check=False)
    if fsck.returncode != 0 or json.loads(fsck.stdout):
        problems.append(f"fsck: {fsck.stdout[:2000]}")
    return problems


def _not_as_sent(box: Sandbox, inbox: list[Path], known: dict[tuple[str | None, str], Transfer]) -> list[str]:
    """Deliveries the recipient cannot decrypt, whose signature fails, or whose bytes are not those received."""
    problems = []
    with Keyring(box.organs[RECIPIENT].gnupg) as ring:
        for path in inbox:
            if (transfer := known.get((RECIPIENT, path.name))) is None:
                continue  # named above
            try:
                got = ring.decrypt(path)
            except GatewayFault as exc:
                problems.append(f"inbox file {path.name}: {exc}")
                continue
            if not got.signature_valid:
                problems.append(f"inbox file {path.name}: the gateway's signature does not verify")
            elif hashlib.sha256(got.data or b"").hexdigest() != transfer.sha256:
                problems.append(f"inbox file {path.name} is not the file received as {transfer.file_name}")
    return problems


def run_chaos(
    count: int,
    crashes: int,
    seed: int = 1,
    log: Callable[[str], None] = print,
    database_url: str = "",
    power_cuts: bool = False,
) -> ChaosReport:
    """Drop ``count`` dossiers in waves while crashing the gateway ``crashes`` times; check after each restart.

    A crash is a kill -9, or with ``power_cuts`` a power cut of the data dir (an ext4 image of its own: root only,
    see gateway.powercut). ``database_url``: an empty PostgreSQL database or schema for the ledger (default: SQLite).
    """
    rng = random.Random(seed)
    settings = {"settle_seconds": 0.1, "rescan_seconds": 1, "listen": "", "retry_max_seconds": 2}
    box = Sandbox(database_url=database_url, settings=settings)
    image = Ext4Image(box.root / "disk.img", box.data_dir) if power_cuts else None
    report = ChaosReport(count, crashes, "power cuts" if power_cuts else "kills")
    try:
        if image is not None:
            image.create()
        box.init_pair(SENDER, RECIPIENT)
        staged = box.data_dir / "staged"  # on the outboxes' filesystem: a drop is one rename
        expected = stage(staged, count, seed)
        fsync_tree(staged)
        outbox = box.folder(SENDER, "outbox")
        start = time.perf_counter()
        box.start(listen="")
        for crash in range(crashes):
            waiting = sorted(p.name for p in staged.iterdir())
            for name in waiting[: len(waiting) // (crashes - crash)]:
                (staged / name).rename(outbox / name)
            time.sleep(rng.uniform(0.05, 1.2))
            if image is None:
                box.stop(signal.SIGKILL)
            else:
                power_cut(image, box)
            report.problems += [f"after crash {crash + 1}: {p}" for p in check_consistent(box, expected, final=False)]
            box.start(listen="")
            log(f"crash {crash + 1}/{crashes} ({report.crash}): {len(box.transfers())} transfers recorded")
        for path in staged.iterdir():
            path.rename(outbox / path.name)
        box.wait_settled(count, timeout=max(120, count))
        box.stop()
        report.seconds = time.perf_counter() - start
        report.problems += check_consistent(box, expected, final=True)
        report.delivered = sum(t.state == "delivered" for t in box.transfers())
        report.rejected = sum(t.state == "rejected" for t in box.transfers())
        return report
    finally:
        box.close()
        if image is not None:
            image.close()
