"""The OpenPGP port: the gateway's keyring over the real ``gpg`` binary.

Key management (generate, import, inspect, export, decrypt) goes through python-gnupg. With
``openpgp = "gpg"`` (the default engine is :mod:`gateway.sequoia`), signing and encrypting a dossier runs
``gpg`` on the file path itself: gpg streams the file (a 2 GiB package never enters Python's memory), a
timeout kills a hanging gpg, and there is no stdin pipe that could raise ``BrokenPipeError`` when gpg exits
early. Compression is off: dossiers are mostly incompressible PDFs.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

import gnupg

from gateway.errors import AdminError, GatewayFault, Problem
from gateway.folders import fsync_tree, write_durably

MAX_HOME_CHARS = 80  # gpg-agent's socket lives in the home; Unix sockets allow ~107 bytes of path
KEY_CACHE_SECONDS = 30.0  # longest reuse of what was read about a key (see KeyCache)
SIGNING_KEY_FILE = "signing-key"  # in the GnuPG home: the fingerprint of the gateway key that signs
GATEWAY_UID = ("flam-gateway", "gateway@flam-gateway.invalid")
_RECIPIENT_PATH = "/envelope/recipient_id"


@dataclass(frozen=True)
class KeyInfo:
    """What the gateway needs to know about a public key."""

    fingerprint: str
    uids: tuple[str, ...]
    expires: datetime | None
    can_encrypt: bool
    revoked: bool


@dataclass(frozen=True)
class GatewayKey:
    """One of the gateway's own key pairs."""

    fingerprint: str
    created: datetime | None
    signs: bool


@dataclass(frozen=True)
class Decrypted:
    """A decrypted delivery as the recipient sees it."""

    data: bytes | None
    signer_fingerprint: str | None
    signature_valid: bool


def _when(epoch: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), UTC) if epoch else None


def file_stamp(path: Path) -> tuple[int, ...]:
    """(inode, size, mtime) of ``path``, ``()`` if it does not exist: changes whenever the file is replaced."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


T = TypeVar("T")


class KeyCache(Generic[T]):
    """What was read about keys, by fingerprint: reused for at most KEY_CACHE_SECONDS, and only while the keybox
    file is unchanged (inode, size, mtime), so a key imported, updated or removed by any process is read again."""

    def __init__(self, keybox: Path) -> None:
        self.keybox = keybox
        self._entries: dict[str, tuple[float, tuple[int, ...], T]] = {}
        self._lock = threading.Lock()

    def get(self, fingerprint: str, load: Callable[[], T]) -> T:
        """The cached value for ``fingerprint`` while still fresh; else ``load()``, cached."""
        stamp = file_stamp(self.keybox)
        with self._lock:
            entry = self._entries.get(fingerprint)
        if entry is not None and entry[1] == stamp and time.monotonic() - entry[0] < KEY_CACHE_SECONDS:
            return entry[2]
        value = load()
        with self._lock:
            self._entries[fingerprint] = (time.monotonic(), stamp, value)
        return value

    def forget(self, fingerprint: str) -> None:
        with self._lock:
            self._entries.pop(fingerprint, None)


class Keyring:
    """One GnuPG home: the gateway's own secret key and the organs' public keys."""

    def __init__(self, home: Path, *, timeout: float = 600.0, gpg_binary: str = "gpg") -> None:
        self.home = Path(home).absolute()
        if len(str(self.home)) > MAX_HOME_CHARS:
            raise GatewayFault(
                f"GnuPG home {self.home} is {len(str(self.home))} characters long; gpg-agent cannot create its "
                f"socket there (Unix socket paths are limited). Use a data dir whose path is at most "
                f"{MAX_HOME_CHARS - 7} characters.",
                code="GNUPG_HOME_TOO_LONG",
            )
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.chmod(0o700)
        self.timeout, self.gpg_binary = timeout, gpg_binary
        self.gpg = gnupg.GPG(gpgbinary=gpg_binary, gnupghome=str(self.home))
        self.gpg.encoding = "utf-8"
        self._signing: tuple[tuple[int, ...], str] | None = None  # the signing-key file's stamp, and what it names
        self.keybox = self.home / "pubring.kbx"
        self.signing_key_file = self.home / SIGNING_KEY_FILE
        self._keys: KeyCache[dict[str, Any] | None] = KeyCache(self.keybox)

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the gpg-agent this home started (each home runs its own)."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                capture_output=True,
                timeout=10,
                check=False,
            )

    # -- the gateway's own keys ---------------------------------------------------------------------------

    def ensure_gateway_key(self) -> str:
        """The fingerprint of the key that signs deliveries, checked to be a key pair of this home; the first key
        pair is generated once."""
        own = [k["fingerprint"] for k in self.gpg.list_keys(secret=True)]
        if not own:
            self._sign_with(self.generate(*GATEWAY_UID))
        elif (signing := self.gateway_fingerprint) not in own:
            raise GatewayFault(
                f"{self.signing_key_file} names {signing}, which is not a key pair of the gateway: every delivery "
                f"would fail. `flam-gateway gateway-key use` one of {', '.join(own)}",
                code="NO_GATEWAY_KEY",
            )
        return self.gateway_fingerprint

    @property
    def gateway_fingerprint(self) -> str:
        """The gateway key that signs deliveries: the one the signing-key file names, read again whenever that
        file is replaced (a stat per call), so a running gateway signs with a key `gateway-key use` chose at
        once. A home made before keys could be rotated has no such file and one secret key: that one."""
        stamp = file_stamp(self.signing_key_file)
        known = self._signing
        if known is not None and known[0] == stamp:
            return known[1]
        if stamp:
            fingerprint = self.signing_key_file.read_text(encoding="ascii").strip()
        else:
            secret = self.gpg.list_keys(secret=True)
            if not secret:
                raise GatewayFault("the gateway has no OpenPGP key yet: run `flam-gateway init`", code="NO_GATEWAY_KEY")
            fingerprint = secret[0]["fingerprint"]
        self._signing = (stamp, fingerprint)
        return fingerprint

    def gateway_keys(self) -> list[GatewayKey]:
        """The gateway's own key pairs (the secret keys of this home), oldest first."""
        signing = self.gateway_fingerprint
        keys = [
            GatewayKey(k["fingerprint"], _when(k.get("date")), k["fingerprint"] == signing)
            for k in self.gpg.list_keys(secret=True)
        ]
        return sorted(keys, key=lambda k: (k.created or datetime.min.replace(tzinfo=UTC), k.fingerprint))

    def add_gateway_key(self) -> str:
        """A new gateway key pair, which does not sign until :meth:`use_gateway_key` names it."""
        self._sign_with(self.gateway_fingerprint)  # a home made before rotation: name its key before there are two
        return self.generate(*GATEWAY_UID)

    def use_gateway_key(self, fingerprint: str) -> tuple[str, str]:
        """Sign every delivery from now on with the gateway key ``fingerprint``; returns (its full fingerprint,
        the key that signed before)."""
        key = self._gateway_key(fingerprint)
        before = self.gateway_fingerprint
        self._sign_with(key.fingerprint)
        return key.fingerprint, before

    def remove_gateway_key(self, fingerprint: str) -> str:
        """Destroy a gateway key pair that does not sign (an old one, or one added by mistake); returns its full
        fingerprint."""
        key = self._gateway_key(fingerprint)
        if key.signs:
            raise AdminError(
                "KEY_SIGNING",
                f"{key.fingerprint} signs the deliveries: `gateway-key use` another key first",
            )
        done = subprocess.run(
            self._gpg("--yes", "--delete-secret-and-public-key", key.fingerprint),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise GatewayFault(
                f"gpg could not remove {key.fingerprint}: {done.stderr.decode('utf-8', 'replace')[-300:]}"
            )
        self._make_durable()
        return key.fingerprint

    def export_gateway_keys(self) -> str:
        """The armored public keys of every gateway key pair: the one that signs and any added beside it."""
        return str(self.gpg.export_keys([k.fingerprint for k in self.gateway_keys()]))

    def _gateway_key(self, fingerprint: str) -> GatewayKey:
        wanted = "".join(fingerprint.split()).upper()
        key = next((k for k in self.gateway_keys() if k.fingerprint == wanted), None)
        if key is None:
            raise AdminError(
                "KEY_UNKNOWN",
                f"{fingerprint} is not a key of the gateway: `gateway-key list` shows them (full fingerprints)",
            )
        return key

    def _sign_with(self, fingerprint: str) -> None:
        write_durably(self.signing_key_file, f"{fingerprint}\n".encode("ascii"), mode=0o600)

    def generate(self, name: str, email: str, expire: str = "0") -> str:
        """Generate a key pair without passphrase in this home; returns its fingerprint."""
        spec = (
            "Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign,cert\n"
            "Subkey-Type: ECDH\nSubkey-Curve: cv25519\nSubkey-Usage: encrypt\n"
            f"Name-Real: {name}\nName-Email: {email}\nExpire-Date: {expire}\n%no-protection\n%commit\n"
        )
        result = self.gpg.gen_key(spec)
        if not result.fingerprint:
            raise GatewayFault(f"gpg could not generate a key: {result.stderr[-500:]}")
        self._make_durable()
        return str(result.fingerprint)

    def _make_durable(self) -> None:
        """gpg does not fsync its files: without this a power cut soon after a key change could empty the keyring."""
        fsync_tree(self.home)

    def _gpg(self, *args: str) -> list[str]:
        """A gpg command line on this home: batch mode, and the empty passphrase of the gateway key."""
        home = ["--homedir", str(self.home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        return [self.gpg_binary, *home, *args]

    def export_gateway_secret(self, fingerprint: str) -> bytes:
        """A gateway key's secret key (binary), for the in-process OpenPGP port (gateway.sequoia)."""
        done = subprocess.run(
            self._gpg("--export-secret-keys", fingerprint), capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0 or not done.stdout:
            raise GatewayFault(f"cannot export the gateway key: {done.stderr.decode('utf-8', 'replace')[-300:]}")
        return done.stdout

    def export_public(self, fingerprint: str) -> str:
        armored = self.gpg.export_keys(fingerprint)
        if not armored:
            raise AdminError("KEY_UNKNOWN", f"no public key {fingerprint} in the keyring")
        return str(armored)

    # -- organs' keys ---------------------------------------------------------------------------------------

    def import_key(self, armored: str, now: datetime | None = None) -> KeyInfo:
        """Import one armored public key that can encrypt now; anything else is refused and not kept."""
        now = now or datetime.now(UTC)
        if "PRIVATE KEY BLOCK" in armored:
            raise AdminError("KEY_UNUSABLE", "this is a secret key: send only the public key")
        scan = self.gpg.scan_keys_mem(armored)
        if len(scan) != 1:
            reason = "no OpenPGP public key found" if not scan else f"{len(scan)} keys found, expected one"
            raise AdminError("KEY_UNUSABLE", reason)
        result = self.gpg.import_keys(armored)
        fingerprint = scan[0]["fingerprint"]
        if not result.fingerprints:
            raise AdminError("KEY_UNUSABLE", f"gpg refused the key: {result.stderr.strip()[-300:]}")
        self._keys.forget(fingerprint)
        problem = self.check_recipient(fingerprint, now)
        if problem is not None:
            with contextlib.suppress(AdminError):
                self.remove_key(fingerprint)
            raise AdminError("KEY_UNUSABLE", f"{problem.code}: {problem.message}")
        info = self.key_info(fingerprint)
        assert info is not None
        self._make_durable()
        return info

    def remove_key(self, fingerprint: str) -> None:
        result = self.gpg.delete_keys(fingerprint, expect_passphrase=False)
        self._keys.forget(fingerprint)
        if str(result) != "ok":
            raise AdminError("KEY_UNKNOWN", f"could not remove key {fingerprint}: {result}")
        self._make_durable()

    def _key(self, fingerprint: str) -> dict[str, Any] | None:
        def listing() -> dict[str, Any] | None:
            return next((k for k in self.gpg.list_keys(keys=[fingerprint]) if k["fingerprint"] == fingerprint), None)

        return self._keys.get(fingerprint, listing)

    def key_info(self, fingerprint: str) -> KeyInfo | None:
        key = self._key(fingerprint)
        if key is None:
            return None
        return KeyInfo(
            fingerprint=fingerprint,
            uids=tuple(key.get("uids", ())),
            expires=_when(key.get("expires")),
            can_encrypt="E" in key.get("cap", ""),
            revoked=key.get("trust") == "r",
        )

    def check_recipient(self, fingerprint: str | None, now: datetime) -> Problem | None:
        """Why the key cannot be encrypted to at ``now`` (None if it can): no key, revoked, expired, no E."""
        key = self._key(fingerprint) if fingerprint else None
        if key is None:
            return Problem("RECIPIENT_NO_KEY", _RECIPIENT_PATH, "the recipient has no OpenPGP key on this gateway")
        if key.get("trust") == "r":
            return Problem("KEY_REVOKED", _RECIPIENT_PATH, f"the recipient's key {fingerprint} is revoked")
        expires = _when(key.get("expires"))
        if key.get("trust") == "e" or (expires is not None and expires <= now):
            return Problem("KEY_EXPIRED", _RECIPIENT_PATH, f"the recipient's key {fingerprint} has expired")
        candidates = [(info.get("cap", ""), info) for info in key.get("subkey_info", {}).values()]
        own_cap = next((k[1] for k in key.get("subkeys", []) if k[2] == fingerprint), None)
        if own_cap and "e" in own_cap:
            candidates.append((own_cap, {"trust": key.get("trust"), "expires": key.get("expires")}))
        encrypting = [info for cap, info in candidates if "e" in cap]
        if not encrypting:
            return Problem("KEY_CANNOT_ENCRYPT", _RECIPIENT_PATH, f"the recipient's key {fingerprint} cannot encrypt")
        live = [i for i in encrypting if i.get("trust") != "r"]
        if not live:
            return Problem("KEY_REVOKED", _RECIPIENT_PATH, "the recipient's encryption subkeys are revoked")
        if all((_when(i.get("expires")) or datetime.max.replace(tzinfo=UTC)) <= now for i in live):
            return Problem("KEY_EXPIRED", _RECIPIENT_PATH, "the recipient's encryption subkeys have expired")
        return None

    # -- the hot path -------------------------------------------------------------------------------------

    def sign_encrypt(self, src: Path, dst: Path, recipient_fpr: str, *, armor: bool = False) -> None:
        """Sign ``src`` with the gateway key and encrypt it to ``recipient_fpr`` into ``dst`` (streamed by gpg)."""
        args = self._gpg(
            "--yes",
            "--no-tty",
            "--quiet",
            "--trust-model",
            "always",
            "--compress-algo",
            "none",
            "--local-user",
            self.gateway_fingerprint,
            "--recipient",
            recipient_fpr,
            "--sign",
            "--encrypt",
            "--output",
            str(dst),
        )
        if armor:
            args.append("--armor")
        try:
            done = subprocess.run([*args, "--", str(src)], capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            dst.unlink(missing_ok=True)
            raise GatewayFault(f"gpg did not finish within {self.timeout:.0f} s and was killed") from exc
        except OSError as exc:
            dst.unlink(missing_ok=True)
            raise GatewayFault(f"cannot run gpg: {exc}") from exc
        if done.returncode != 0:
            dst.unlink(missing_ok=True)
            detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise GatewayFault(f"gpg failed ({done.returncode}): {' | '.join(detail)}")

    @cached_property
    def _message_reader(self) -> gnupg.GPG:
        """python-gnupg for reading messages: Latin-1 decodes any byte gpg prints about a signature, and
        salted signatures (Sequoia's, OpenPGP.js's) carry a binary notation that gpg prints raw."""
        return gnupg.GPG(gpgbinary=self.gpg_binary, gnupghome=str(self.home), encoding="latin-1")

    def decrypt(self, src: Path, dst: Path | None = None) -> Decrypted:
        """Decrypt a delivery with a secret key of this home and report its signature."""
        with open(src, "rb") as fh:
            result = self._message_reader.decrypt_file(fh, output=str(dst) if dst else None)
        if not result.ok:
            raise GatewayFault(f"cannot decrypt {src.name}: {result.status}")
        signer = getattr(result, "pubkey_fingerprint", None) or result.fingerprint
        return Decrypted(None if dst else bytes(result.data), signer, bool(result.valid))


def generate_key(home: Path, name: str, email: str, *, expire: str = "0") -> str:
    """A fresh key pair able to encrypt, in its own home (an organ's side); returns the fingerprint."""
    with Keyring(home) as ring:
        return ring.generate(name, email, expire)


def export_public_key(home: Path, fingerprint: str) -> str:
    with Keyring(home) as ring:
        return ring.export_public(fingerprint)


def decrypt_file(home: Path, src: Path, dst: Path | None = None) -> Decrypted:
    """Decrypt ``src`` with the key in ``home`` (into ``dst``, or in memory) and check who signed it."""
    with Keyring(home) as ring:
        return ring.decrypt(src, dst)
