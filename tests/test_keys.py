"""OpenPGP keys an admin imports: refused when they cannot serve (expired, revoked, sign-only, secret,
garbage), with a clear error in the CLI; the gateway key signs every delivery."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.crypto import MAX_HOME_CHARS, Keyring
from gateway.errors import GatewayFault
from gateway.harness import Sandbox


def gpg(home: Path, *args: str) -> str:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--pinentry-mode", "loopback", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def new_key(home: Path, uid: str, *extra: str, usage: str = "sign", subkey: bool = True, expire: str = "never") -> str:
    gpg(home, *extra, "--quick-gen-key", uid, "ed25519", usage, expire)
    fpr = gpg(home, "--list-keys", "--with-colons", uid).split("fpr:::::::::")[1].split(":")[0]
    if subkey:
        gpg(home, *extra, "--quick-add-key", fpr, "cv25519", "encr", expire)
    return fpr


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox(settings={"listen": ""})
    sandbox.cli("init")
    sandbox.cli("organ", "add", "pk-bau-zh", "--kind", "joint_committee", "--name", "PK")
    yield sandbox
    sandbox.close()


def refused(box: Sandbox, armored: str, reason: str) -> None:
    key_file = box.root / "key.asc"
    key_file.write_text(armored)
    done = box.cli("organ", "pgp-key", "import", "pk-bau-zh", str(key_file), check=False)
    assert done.returncode == 2, done.stdout
    assert "KEY_UNUSABLE" in done.stderr and reason in done.stderr, done.stderr


def test_unusable_keys_are_refused_with_the_reason(box: Sandbox) -> None:
    home = box.root / "k"
    sign_only = new_key(home, "sign-only <s@x.invalid>", subkey=False)
    refused(box, gpg(home, "--armor", "--export", sign_only), "KEY_CANNOT_ENCRYPT")

    revoked = new_key(home, "revoked <r@x.invalid>")
    revocation = next((home / "openpgp-revocs.d").glob(f"{revoked}.rev")).read_text().replace(":-----", "-----")
    subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--import"],
        input=revocation,
        text=True,
        capture_output=True,
        check=True,
    )
    refused(box, gpg(home, "--armor", "--export", revoked), "KEY_REVOKED")

    # "!" freezes gpg's clock: every call sees the same second, so the subkey is never "in the future".
    past = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y%m%dT%H%M%S!")
    expired = new_key(home, "expired <e@x.invalid>", "--faked-system-time", past, expire="1d")
    refused(box, gpg(home, "--armor", "--export", expired), "KEY_EXPIRED")

    refused(box, gpg(home, "--armor", "--export-secret-keys", sign_only), "secret key")
    refused(
        box, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n-----END PGP PUBLIC KEY BLOCK-----\n", "no OpenPGP"
    )
    listed = box.cli("organ", "list", "--json").stdout
    assert '"pgp_fingerprint": null' in listed, "nothing refused was kept"


def test_a_good_key_is_accepted_and_the_gateway_key_exported(box: Sandbox) -> None:
    home = box.root / "good"
    fpr = new_key(home, "good <g@x.invalid>")
    key_file = box.root / "good.asc"
    key_file.write_text(gpg(home, "--armor", "--export", fpr))
    assert fpr in box.cli("organ", "pgp-key", "import", "pk-bau-zh", str(key_file)).stdout
    [organ] = json.loads(box.cli("organ", "list", "--json").stdout)
    assert (organ["pgp_fingerprint"], organ["pgp_key"]) == (fpr, "usable")
    soon = new_key(home, "soon <s@x.invalid>", expire="10d")
    key_file.write_text(gpg(home, "--armor", "--export", soon))
    box.cli("organ", "pgp-key", "import", "pk-bau-zh", str(key_file))
    [organ] = json.loads(box.cli("organ", "list", "--json").stdout)
    assert (organ["pgp_fingerprint"], organ["pgp_key"]) == (soon, "expires within 30 days")
    exported = box.cli("gateway-key", "export").stdout
    assert exported.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_a_gnupg_home_too_long_for_the_agent_socket_is_refused_clearly(tmp_path: Path) -> None:
    long_home = tmp_path / ("x" * (MAX_HOME_CHARS + 10))
    with pytest.raises(GatewayFault) as exc:
        Keyring(long_home)
    assert exc.value.code == "GNUPG_HOME_TOO_LONG" and "socket" in exc.value.message


def test_a_missing_recipient_key_fails_cleanly_without_partial_output(short_tmp: Path) -> None:
    with Keyring(short_tmp / "g") as ring:
        ring.ensure_gateway_key()
        src, dst = short_tmp / "in.json", short_tmp / "out.pgp"
        src.write_bytes(b"{}" * 100_000)
        with pytest.raises(GatewayFault):
            ring.sign_encrypt(src, dst, "AB" * 20)
        assert not dst.exists()
