"""The newcomer's first command: `flam-gateway demo` runs the whole story and exits cleanly."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_the_whole_story_and_exits_cleanly() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "demo"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gateway signature valid" in done.stdout
    assert "receipt for kv-bau-zh: 211" in done.stdout and "picked up by the recipient" in done.stdout
    assert "demo finished cleanly" in done.stdout
