"""Monitoring: `flam-gateway status` and the metrics endpoint tell an admin whether the night drains. They show
the open transfers by state and how long the oldest has not moved, retries, receipts not yet written and the
last hour's audit actions, and `status` exits 1 when work has stopped moving."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from pathlib import Path

from gateway import samples
from gateway.clock import system_clock
from gateway.folders import Folders
from gateway.harness import Sandbox
from gateway.ledger.store import Ledger
from gateway.metrics import GatewayCollector

KV, PK = "kv-bau-zh", "pk-bau-zh"


def test_an_admin_sees_a_paused_gateway_stuck_and_then_the_night_drain() -> None:
    settings = {"settle_seconds": 0.1, "rescan_seconds": 1, "metrics_listen": "127.0.0.1:0", "workers": 0}
    box = Sandbox(settings={**settings, "max_message_bytes": 1_000_000})  # status wants twice that free
    try:
        box.init_pair(KV, PK)
        box.start(listen="")
        box.drop(KV, "good.json", samples.dossier_bytes(samples.make_dossier(KV, PK)))
        box.drop(KV, "bad.json", b"{not json")
        box.wait_for(lambda: len(box.transfers()) == 2, what="both received")

        done = box.cli("status", "--stuck-after", "600", check=False)
        assert done.returncode == 0 and "received" in done.stdout, "received a moment ago: not stuck yet"
        box.wait_for(lambda: box.cli("status", "--stuck-after", "1", check=False).returncode == 1, what="stuck")
        done = box.cli("status", "--stuck-after", "1", check=False)
        assert "stuck: 2 received transfer(s), the oldest unmoved for" in done.stderr, done.stderr
        assert "workers > 0" in done.stderr
        seen = box.metrics()
        assert seen['flam_gateway_open_transfers{state="received"}'] == 2
        assert seen['flam_gateway_oldest_open_transfer_age_seconds{state="received"}'] >= 1
        assert seen['flam_gateway_audit_events_last_hour{action="transition:received"}'] == 2
        assert seen["flam_gateway_ledger_up"] == 1
        assert box.wait_for(lambda: "flam_gateway_maintenance_round_seconds" in box.metrics(), what="a round")
        assert seen["process_resident_memory_bytes"] > 0
        room = os.statvfs(box.data_dir)
        assert abs(seen["flam_gateway_data_dir_free_bytes"] - room.f_bavail * room.f_frsize) < 100 * 2**20
        assert seen["flam_gateway_data_dir_size_bytes"] == room.f_blocks * room.f_frsize
        assert seen["flam_gateway_data_dir_inodes"] == room.f_files

        box.stop()
        box.env["FLAM_GATEWAY_WORKERS"] = "2"  # the admin un-pauses the deliveries
        box.start(listen="")
        box.wait_settled(2)
        report = json.loads(box.cli("status", "--stuck-after", "1", "--json").stdout)
        assert [(s["state"], s["count"]) for s in report["open_transfers"]] == [("delivered", 1)]
        assert (report["stuck"], report["receipts_unwritten"], report["retrying"]) == ([], 0, 0)
        assert report["audit_events_last_hour"]["transition:rejected"] == 1
        seen = box.metrics()
        assert seen['flam_gateway_open_transfers{state="received"}'] == 0
        assert seen['flam_gateway_oldest_open_transfer_age_seconds{state="received"}'] == 0
        assert seen['flam_gateway_open_transfers{state="delivered"}'] == 1
        assert not any(KV in name or PK in name for name in seen), "no metric names an organ"
    finally:
        box.close()


def test_a_ledger_that_does_not_answer_is_a_metric_and_not_a_broken_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(f"sqlite:///{path}")
    collector = GatewayCollector(ledger, system_clock, lambda: None, Folders(tmp_path).space)

    def up() -> float:
        return next(s.value for m in collector.collect() for s in m.samples if s.name == "flam_gateway_ledger_up")

    assert up() == 1
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE event")  # the ledger cannot answer the scrape's queries
    assert up() == 0
    ledger.close()


def test_a_metrics_port_in_use_stops_serve_before_it_starts(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:  # another program has the port
        where = f"127.0.0.1:{taken.getsockname()[1]}"
        box = Sandbox(tmp_path, settings={"listen": "", "metrics_listen": where})
        done = box.cli("serve", check=False)
        assert done.returncode == 2 and f"error METRICS_START: the metrics endpoint cannot listen on {where}" in (
            done.stderr
        ), done.stderr
        box.close()
