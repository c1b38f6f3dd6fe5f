"""Both OpenPGP engines, Sequoia in-process (the default) and a gpg process per file (`openpgp = "gpg"`): what
the recipient gets decrypts and verifies with plain gpg and with python-gnupg, binary and armored, for a JSON
dossier and a zip package."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import samples
from gateway.config import OPENPGP_ENGINES
from gateway.crypto import Keyring, export_public_key, generate_key
from gateway.errors import GatewayFault
from gateway.harness import Sandbox, plain_gpg_decrypt
from gateway.service import openpgp_port

KV, PK, CANTON = "kv-bau-zh", "pk-bau-zh", "canton-zh"


@pytest.fixture(scope="module", params=OPENPGP_ENGINES)
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    sandbox = Sandbox(settings={"settle_seconds": 0.2, "rescan_seconds": 1, "listen": "", "openpgp": request.param})
    sandbox.cli("init")
    sandbox.add_organ(KV, "control_body")
    sandbox.add_organ(PK, "joint_committee")
    sandbox.cli("organ", "add", CANTON, "--kind", "canton", "--name", "Canton ZH", "--armor")
    sandbox.add_organ_keys(CANTON)
    sandbox.allow(KV, PK)
    sandbox.allow(KV, CANTON)
    sandbox.start(listen="")
    yield sandbox
    sandbox.close()


def test_deliveries_decrypt_and_verify_with_plain_gpg_and_python_gnupg(box: Sandbox, tmp_path: Path) -> None:
    report = samples.dossier_bytes(
        samples.make_dossier(KV, PK, attachments=[("bericht.pdf", samples.make_pdf(40_000))])
    )
    pdfs = {"kontrollbericht.pdf": samples.make_pdf(300_000, seed=1)}
    doc = samples.make_dossier(KV, CANTON, attachments=list(pdfs.items()), embed=False)
    package = samples.write_package(tmp_path / "pkg.zip", doc, pdfs)
    box.drop(KV, "report.json", report)
    box.drop(KV, "package.zip", package.read_bytes())

    for name, recipient, data, suffix in (
        ("report.json", PK, report, ".json.pgp"),
        ("package.zip", CANTON, package.read_bytes(), ".zip.asc"),
    ):
        transfer = box.wait_transfer(name, "delivered")
        assert transfer.delivered_name.endswith(suffix)
        plain, signer = plain_gpg_decrypt(
            box.organs[recipient].gnupg, box.folder(recipient, "inbox") / transfer.delivered_name
        )
        assert plain == data, "the recipient gets the exact bytes dropped"
        assert signer == box.gateway_fingerprint(), "signed by the gateway key, verified by plain gpg"
        seen = box.decrypt(recipient, box.folder(recipient, "inbox") / transfer.delivered_name)
        assert (seen.data, seen.signer_fingerprint, seen.signature_valid) == (data, signer, True), "python-gnupg"
    assert not any((box.data_dir / "spool").rglob("*.*")), "no plaintext or encryption left in the spool"
    engine = box.env["FLAM_GATEWAY_OPENPGP"]
    assert f"OpenPGP by {engine}" in box.log.read_text(), "the admin sees which engine signs"


def test_an_unknown_openpgp_engine_is_refused_clearly() -> None:
    env = {**os.environ, "FLAM_GATEWAY_OPENPGP": "pgpy"}
    done = subprocess.run([sys.executable, "-m", "gateway", "organ", "list"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "CONFIG_INVALID" in done.stderr and "'openpgp'" in done.stderr


@pytest.mark.parametrize("engine", OPENPGP_ENGINES)
def test_a_missing_recipient_key_fails_cleanly_without_partial_output(short_tmp: Path, engine: str) -> None:
    with Keyring(short_tmp / "g") as ring:
        ring.ensure_gateway_key()
        src, dst = short_tmp / "in.json", short_tmp / "out.pgp"
        src.write_bytes(b"{}" * 100_000)
        with pytest.raises(GatewayFault) as exc:
            openpgp_port(engine, ring).sign_encrypt(src, dst, "AB" * 20)
        assert exc.value.code == "GATEWAY_FAULT" and not dst.exists()


@pytest.mark.parametrize("engine", OPENPGP_ENGINES)
def test_a_key_the_admin_removes_is_not_used_again_even_while_cached(short_tmp: Path, engine: str) -> None:
    fingerprint = generate_key(short_tmp / "pk", "PK Bau ZH", "pk@example.ch")
    with Keyring(short_tmp / "g") as ring, Keyring(short_tmp / "g") as admin:
        ring.ensure_gateway_key()
        admin.import_key(export_public_key(short_tmp / "pk", fingerprint))
        port, now = openpgp_port(engine, ring), datetime.now(UTC)
        src = short_tmp / "in.json"
        src.write_bytes(b"{}" * 1000)
        assert port.check_recipient(fingerprint, now) is None
        port.sign_encrypt(src, short_tmp / "first.pgp", fingerprint)  # the key is now cached

        admin.remove_key(fingerprint)  # another process (the admin's CLI), well within the cache time
        problem = port.check_recipient(fingerprint, now)
        assert problem is not None and problem.code == "RECIPIENT_NO_KEY"
        with pytest.raises(GatewayFault):
            port.sign_encrypt(src, short_tmp / "second.pgp", fingerprint)
        assert not (short_tmp / "second.pgp").exists()
