"""In-process OpenPGP with pysequoia: sign and encrypt a dossier without starting a gpg process for it.

The default engine (setting ``openpgp = "sequoia"``; ``"gpg"`` runs a gpg process per file instead). Keys stay
in the gateway's GnuPG home, managed and checked by :class:`gateway.crypto.Keyring`; this port only signs with
the gateway key and encrypts to the recipient, streaming file to file (a 2 GiB package does not enter memory).
Deliveries decrypt and verify with plain gpg. Its signatures carry Sequoia's binary salt notation (a defence of
EdDSA signatures against fault attacks), which python-gnupg set to UTF-8 cannot read; see the README.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pysequoia

from gateway.crypto import KeyCache, Keyring
from gateway.errors import AdminError, GatewayFault, Problem


class SequoiaCrypto:
    """The OpenPGP port of the pipeline, signing and encrypting in-process."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._local = threading.local()  # per thread: a signer and certificates are not shared across threads

    def check_recipient(self, fingerprint: str | None, now: datetime) -> Problem | None:
        return self.keyring.check_recipient(fingerprint, now)

    def sign_encrypt(self, src: Path, dst: Path, recipient_fpr: str, *, armor: bool = False) -> None:
        """Sign ``src`` with the gateway key and encrypt it to ``recipient_fpr`` into ``dst`` (streamed)."""
        try:
            recipient = self._cert(recipient_fpr)
            pysequoia.encrypt_file(str(src), str(dst), [recipient], self._signer(), armor=armor)
        except (AdminError, RuntimeError, ValueError, OSError) as exc:  # AdminError: key gone since its check
            dst.unlink(missing_ok=True)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GatewayFault(f"OpenPGP (Sequoia) could not sign and encrypt: {reason}") from exc

    def _signer(self) -> pysequoia.PySigner:
        """The gateway key that signs now (see Keyring.gateway_fingerprint), loaded again when another is chosen."""
        fingerprint = self.keyring.gateway_fingerprint
        loaded: tuple[str, pysequoia.PySigner] | None = getattr(self._local, "signer", None)
        if loaded is None or loaded[0] != fingerprint:
            secret = self.keyring.export_gateway_secret(fingerprint)
            loaded = self._local.signer = (fingerprint, pysequoia.Tsk.from_bytes(secret).signer())
        return loaded[1]

    def _cert(self, fingerprint: str) -> pysequoia.Cert:
        """The recipient's certificate from the keyring, cached per thread like the keyring's own listings."""
        certs: KeyCache[pysequoia.Cert] | None = getattr(self._local, "certs", None)
        if certs is None:
            certs = self._local.certs = KeyCache(self.keyring.keybox)
        return certs.get(
            fingerprint, lambda: pysequoia.Cert.from_bytes(self.keyring.export_public(fingerprint).encode())
        )
