"""Sign with the gateway key and encrypt for the recipient, into the private spool (redo-safe)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Protocol

from gateway.errors import Held, Problem
from gateway.folders import fsync_dir


class Crypto(Protocol):
    """The OpenPGP port (gateway.sequoia.SequoiaCrypto and gateway.crypto.Keyring implement it)."""

    def check_recipient(self, fingerprint: str | None, now: datetime) -> Problem | None: ...

    def sign_encrypt(self, src: Path, dst: Path, recipient_fpr: str, *, armor: bool = False) -> None: ...


def encrypt(src: Path, dst: Path, fingerprint: str | None, crypto: Crypto, now: datetime, armor: bool) -> None:
    """Write the signed encryption of ``src`` to ``dst`` atomically; raise Held if the key is unusable.

    A ``dst`` left by an earlier run is complete (it is only ever renamed into place) and is kept.
    """
    problem = crypto.check_recipient(fingerprint, now)
    if problem is not None:
        raise Held(problem)
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    crypto.sign_encrypt(src, tmp, fingerprint or "", armor=armor)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
