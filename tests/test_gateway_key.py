"""The gateway's own OpenPGP key is rotated while `serve` runs: a new key pair is added and published beside the
old one, then chosen to sign, then the old one is destroyed. Every delivery verifies with plain gpg against the
key that signed it, and each step is in the audit trail."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import samples
from gateway.config import OPENPGP_ENGINES
from gateway.crypto import Keyring, decrypt_file, export_public_key, generate_key
from gateway.harness import Sandbox, plain_gpg_decrypt
from gateway.service import openpgp_port

KV, PK = "kv-bau-zh", "pk-bau-zh"


@pytest.fixture
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox(settings={"settle_seconds": 0.2, "rescan_seconds": 1, "listen": ""})
    sandbox.init_pair(KV, PK)
    yield sandbox
    sandbox.close()


def deliver(box: Sandbox, name: str) -> tuple[Path, str | None]:
    """KV drops a dossier for PK; returns the delivery and the key whose good signature plain gpg reports."""
    data = samples.dossier_bytes(samples.make_dossier(KV, PK))
    box.drop(KV, name, data)
    delivery = box.folder(PK, "inbox") / box.wait_transfer(name, "delivered").delivered_name
    plain, signer = plain_gpg_decrypt(box.organs[PK].gnupg, delivery)
    assert plain == data
    return delivery, signer


def organ_imports(box: Sandbox, published: str) -> None:
    """What the recipient's admin does with `gateway-key export`: import it into the organ's own gpg."""
    subprocess.run(
        ["gpg", "--homedir", str(box.organs[PK].gnupg), "--batch", "--import"],
        input=published.encode(),
        capture_output=True,
        check=True,
    )


def keys(box: Sandbox) -> dict[str, bool]:
    return {k["fingerprint"]: k["signs"] for k in json.loads(box.cli("gateway-key", "list", "--json").stdout)}


def test_the_key_of_a_data_dir_made_before_rotation_is_rotated_while_serve_runs(box: Sandbox) -> None:
    old = box.gateway_fingerprint()
    signing_key = box.data_dir / "gnupg" / "signing-key"
    signing_key.unlink()  # a data dir made before keys could be rotated: its one key signs
    box.start(listen="")
    first, signer = deliver(box, "first.json")
    assert signer == old

    added = box.cli("gateway-key", "add").stdout
    new = added.split("gateway OpenPGP key ", 1)[1].split()[0]
    assert "does not sign yet" in added and new != old
    assert keys(box) == {old: True, new: False}, "the old key still signs once there are two"
    organ_imports(box, box.cli("gateway-key", "export").stdout)  # both keys, before the switch
    assert deliver(box, "second.json")[1] == old, "an added key does not sign until it is chosen"

    for command, fingerprint, code in (
        ("use", box.organs[PK].fingerprint, "KEY_UNKNOWN"),  # an organ's public key is not the gateway's
        ("use", "AB" * 20, "KEY_UNKNOWN"),
        ("use", new[:16], "KEY_UNKNOWN"),  # a short id could name two keys
        ("remove", old, "KEY_SIGNING"),
    ):
        done = box.cli("gateway-key", command, fingerprint, check=False)
        assert done.returncode == 2 and f"error {code}" in done.stderr, (command, done.stderr)
    assert keys(box) == {old: True, new: False}, "nothing refused changed anything"

    spaced = " ".join(new[i : i + 4] for i in range(0, 40, 4)).lower()  # as gpg prints it, typed in lower case
    switched = box.cli("gateway-key", "use", spaced).stdout
    assert f"{new} signs deliveries from now on ({old} did)" in switched
    assert deliver(box, "third.json")[1] == new, "the running gateway signs with the chosen key at once"
    assert plain_gpg_decrypt(box.organs[PK].gnupg, first)[1] == old, "what the old key signed still verifies"

    box.cli("gateway-key", "remove", old)
    assert keys(box) == {new: True}
    assert box.cli("gateway-key", "export").stdout.count("BEGIN PGP PUBLIC KEY BLOCK") == 1

    box.stop()
    signing_key.write_text("AB" * 20 + "\n")  # edited by hand, or half restored from a backup
    for command in (["init"], ["serve", "--listen", ""]):
        done = box.cli(*command, check=False)
        assert done.returncode == 2 and "error NO_GATEWAY_KEY" in done.stderr and new in done.stderr, done.stderr
    box.cli("gateway-key", "use", new)
    box.start(listen="")
    assert deliver(box, "fourth.json")[1] == new, "the choice outlives a restart"
    assert f"key {new}" in box.log.read_text(), "serve's ready line names the signing key"

    events = json.loads(box.cli("audit", "list", "--json").stdout)
    actions = [e for e in events if e["action"].startswith("gateway_key")]
    assert [(e["action"], e["detail"].split()[0].rstrip(";")) for e in actions] == [
        ("gateway_key_added", new),
        ("gateway_key_used", new),
        ("gateway_key_removed", old),
        ("gateway_key_used", new),
    ]
    assert box.cli("audit", "verify").returncode == 0


@pytest.mark.parametrize("engine", OPENPGP_ENGINES)
def test_each_engine_signs_with_the_key_another_process_chose_at_its_next_file(short_tmp: Path, engine: str) -> None:
    recipient = generate_key(short_tmp / "pk", "PK Bau ZH", "pk@example.ch")
    with Keyring(short_tmp / "g") as ring, Keyring(short_tmp / "g") as admin:
        old = ring.ensure_gateway_key()
        ring.import_key(export_public_key(short_tmp / "pk", recipient))
        port = openpgp_port(engine, ring)
        src = short_tmp / "in.json"
        src.write_bytes(b"{}" * 1000)

        def signer(name: str) -> str | None:
            port.sign_encrypt(src, short_tmp / name, recipient)  # the engine keeps what it loaded for the next file
            return decrypt_file(short_tmp / "pk", short_tmp / name).signer_fingerprint

        assert signer("first.pgp") == old
        new = admin.add_gateway_key()  # the admin's CLI: another process, another Keyring
        assert signer("second.pgp") == old
        admin.use_gateway_key(new)
        assert signer("third.pgp") == new
