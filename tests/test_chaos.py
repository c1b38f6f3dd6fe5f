"""Nothing lost, nothing twice: kill -9 the gateway twenty times during a 500-dossier batch."""

from __future__ import annotations

from gateway.chaos import run_chaos


def test_twenty_kills_during_a_batch_lose_nothing_and_deliver_nothing_twice() -> None:
    report = run_chaos(count=500, kills=20, seed=7, log=lambda _: None)
    assert report.problems == []
    assert (report.delivered, report.rejected) == (450, 50)
