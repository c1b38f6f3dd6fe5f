"""Monitoring: `flam-gateway status` and the metrics endpoint tell an admin whether the night drains. They show
the open transfers by state and how long the oldest has not moved, retries, receipts not yet written and the
last hour's audit actions, and `status` exits 1 when work has stopped moving."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import sqlite3
import ssl
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def issue(folder: Path, name: str, issuer: tuple[Path, Path] | None = None, *, ip: str = "") -> tuple[Path, Path]:
    """A certificate and its key as PEM files ``name.crt``, ``name.key``: signed by ``issuer`` (its cert and key),
    or a self-signed CA. ``ip``: the address a server certificate is for."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        signer, issuer_name, ca = key, subject, True
    else:
        signer = serialization.load_pem_private_key(issuer[1].read_bytes(), None)
        issuer_name, ca = x509.load_pem_x509_certificate(issuer[0].read_bytes()).subject, False
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if ca:
        usage = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False)
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return crt, pem


def client_side(ca: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    """A scraper's TLS: it trusts ``ca`` for the server and shows ``cert`` (its certificate and key), if any."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def test_prometheus_scrapes_over_https_with_the_client_certificate_the_admin_issued_and_nobody_else(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue(pki, "monitoring-ca")
    server = issue(pki, "gateway", ca, ip="127.0.0.1")
    prometheus = issue(pki, "prometheus", ca)
    stranger = issue(pki, "stranger")  # a certificate of its own making
    settings = {"listen": "", "metrics_listen": "127.0.0.1:0", "workers": 0}
    tls = {"metrics_tls_cert": str(server[0]), "metrics_tls_key": str(server[1]), "metrics_client_ca": str(ca[0])}
    box = Sandbox(tmp_path / "box", settings={**settings, **tls})
    try:
        box.init_pair(KV, PK)
        box.start(listen="")
        url = box.metrics_url()
        assert url.startswith("https://127.0.0.1:"), "the ready line names HTTPS"
        stalled = socket.create_connection(("127.0.0.1", int(url.rpartition(":")[2])))  # connects, says nothing
        assert box.metrics(client_side(ca[0], prometheus))["flam_gateway_ledger_up"] == 1, "beside a stalled client"

        for context in (client_side(ca[0], None), client_side(ca[0], stranger)):  # none, or a stranger's
            with pytest.raises(OSError):  # the handshake is refused (TLS 1.3 tells the client at its first read)
                urllib.request.urlopen(f"{url}/metrics", timeout=10, context=context).read()
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"{url.replace('https', 'http', 1)}/metrics", timeout=10).read()
        assert box.metrics(client_side(ca[0], prometheus))["flam_gateway_ledger_up"] == 1, "and after the refusals"
        assert box.log.read_text().count("metrics: a request from 127.0.0.1 failed") >= 3
        stalled.close()
        box.stop()

        box.env["FLAM_GATEWAY_METRICS_TLS_KEY"] = str(stranger[1])  # the admin names a key of another certificate
        done = box.cli("serve", check=False)
        assert done.returncode == 2 and "error METRICS_START: the metrics endpoint cannot use its certificate" in (
            done.stderr
        ), done.stderr
    finally:
        box.close()
