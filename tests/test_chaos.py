"""Nothing lost, nothing twice: kill -9 the gateway again and again during a batch, on SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.chaos import run_chaos


def test_twenty_kills_during_a_batch_lose_nothing_and_deliver_nothing_twice() -> None:
    report = run_chaos(count=500, crashes=20, seed=7, log=lambda _: None)
    assert report.problems == []
    assert (report.delivered, report.rejected) == (450, 50)


def test_kills_with_a_postgresql_ledger_lose_nothing_and_deliver_nothing_twice(pg_url: str) -> None:
    report = run_chaos(count=200, crashes=10, seed=11, log=lambda _: None, database_url=pg_url)
    assert report.problems == []
    assert (report.delivered, report.rejected) == (180, 20)
