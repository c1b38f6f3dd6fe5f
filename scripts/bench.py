#!/usr/bin/env python3
"""flam-gateway benchmarks: each prints figures beside its baseline and writes them to a JSON file.

    python scripts/bench.py batch --count 1000 --runs 3      # a drop of N dossiers vs a gpg loop
    python scripts/bench.py all                              # every benchmark of the Performance section

Timings live here, never in tests. Every run uses the real `flam-gateway serve`, the real gpg and real clients.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway import samples
from gateway.harness import Sandbox

SENDER, RECIPIENT = "kv-bau-zh", "pk-bau-zh"


def two_organs(settings: dict[str, Any]) -> Sandbox:
    box = Sandbox(settings={"settle_seconds": 0.2, "rescan_seconds": 5, **settings})
    box.cli("init")
    box.add_organ(SENDER, "control_body")
    box.add_organ(RECIPIENT, "joint_committee")
    box.allow(SENDER, RECIPIENT)
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


def batch_once(count: int, pdf_bytes: int, workers: int) -> dict[str, float]:
    """Drop ``count`` control reports at once; wall time until all are delivered and receipted."""
    box = two_organs({"workers": workers, "listen": ""})
    try:
        staged = control_reports(box.root / "staged", count, pdf_bytes)
        box.start(listen="")
        outbox = box.folder(SENDER, "outbox")
        start = time.perf_counter()
        for path in staged:
            path.rename(outbox / path.name)
        rows = box.wait_settled(count, timeout=3600)
        gateway = time.perf_counter() - start
        assert all(t.state == "delivered" for t in rows), {t.state for t in rows}
        box.stop()
        baseline = gpg_loop(box, control_reports(box.root / "loop", count, pdf_bytes))
        return {"gateway_s": gateway, "gpg_loop_s": baseline, "ratio": gateway / baseline}
    finally:
        box.close()


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
    runs = [batch_once(args.count, args.pdf_bytes, args.workers) for _ in range(args.runs)]
    for i, r in enumerate(runs, 1):
        print(
            f"batch run {i}: gateway {r['gateway_s']:.2f} s, gpg loop {r['gpg_loop_s']:.2f} s, ratio {r['ratio']:.2f}"
        )
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"batch median of {len(runs)}: {args.count} dossiers in {summary['gateway_s']:.2f} s "
        f"({args.count / summary['gateway_s']:.0f}/s); gpg loop {summary['gpg_loop_s']:.2f} s; "
        f"ratio {summary['ratio']:.2f} (target ≤ 0.5)"
    )
    return {"count": args.count, "pdf_bytes": args.pdf_bytes, "runs": runs, "median": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["batch", "all"])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--pdf-bytes", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    if args.what in ("batch", "all"):
        results["batch"] = run_batch(args)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
