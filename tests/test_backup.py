"""Backups (README: *Backups*): the data dir of a stopped gateway, archived with tar and restored on another path
of another host, carries on where it stopped; the organs notice nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gateway import samples
from gateway.harness import Sandbox, openssh_sftp

KV, PK = "kv-bau-zh", "pk-bau-zh"


def test_a_data_dir_archived_while_stopped_and_restored_elsewhere_carries_on_as_before(tmp_path: Path) -> None:
    old = Sandbox(settings={"settle_seconds": 0.1, "rescan_seconds": 1})
    new = Sandbox(settings={"settle_seconds": 0.1, "rescan_seconds": 1})  # the new host, the data dir elsewhere
    try:
        old.init_pair(KV, PK)
        port = old.start()
        first = tmp_path / "first.json"
        first.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
        assert openssh_sftp(port or 0, KV, old.organs[KV].ssh_key, f"put {first} /outbox/\n").returncode == 0
        delivered = old.wait_transfer("first.json", "delivered").delivered_name
        host_keys = json.loads(old.cli("host-key", "fingerprints", "--json").stdout)
        signer = old.gateway_fingerprint()

        old.stop()  # systemctl stop flam-gateway, then the archive
        archive = tmp_path / "flam-gateway.tar"
        subprocess.run(["tar", "-C", str(old.data_dir), "-cf", str(archive), "."], check=True)
        new.data_dir.mkdir()
        subprocess.run(["tar", "-C", str(new.data_dir), "-xf", str(archive)], check=True)
        new.organs = old.organs  # the organs and their keys are the same; only the gateway moved

        assert new.cli("fsck").stdout.strip() == "ledger and folders agree"
        port = new.start()
        assert json.loads(new.cli("host-key", "fingerprints", "--json").stdout) == host_keys, "no host key warning"
        fetched = tmp_path / "fetched.pgp"
        got = openssh_sftp(port or 0, PK, new.organs[PK].ssh_key, f"get /inbox/{delivered} {fetched}\n")
        assert got.returncode == 0, got.stderr
        plain = new.decrypt(PK, fetched)
        assert plain.data == first.read_bytes() and plain.signer_fingerprint == signer

        second = tmp_path / "second.json"
        second.write_bytes(samples.dossier_bytes(samples.make_dossier(KV, PK)))
        assert openssh_sftp(port or 0, KV, new.organs[KV].ssh_key, f"put {second} /outbox/\n").returncode == 0
        transfer = new.wait_transfer("second.json", "delivered")
        plain = new.decrypt(PK, new.folder(PK, "inbox") / (transfer.delivered_name or ""))
        assert plain.data == second.read_bytes() and plain.signer_fingerprint == signer, "the same gateway key"
        assert [t.file_name for t in new.transfers()] == ["first.json", "second.json"]
        assert new.cli("audit", "verify").stdout.startswith("audit chain intact"), "the history came along"
    finally:
        new.close()
        old.close()
