"""SSH host keys: Ed25519 and RSA-3072 (old client libraries in legacy software speak only RSA)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.folders import fsync_dir, fsync_file

HOST_KEYS = (("ssh_host_ed25519_key", "ssh-ed25519", {}), ("ssh_host_rsa_key", "ssh-rsa", {"key_size": 3072}))


def ensure_host_keys(directory: Path) -> list[Path]:
    """Generate the host keys once (0600); later calls return the same files, so fingerprints stay stable."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for name, algorithm, options in HOST_KEYS:
        path = directory / name
        if not path.exists():
            import asyncssh  # only the door and this one-off need it: other processes stay without it

            key = asyncssh.generate_private_key(algorithm, **options)
            path.with_name(name + ".pub").write_bytes(key.export_public_key("openssh"))
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key.export_private_key("openssh"))
                fh.flush()
                os.fsync(fh.fileno())  # a power cut must not leave an empty key that stops the door starting
            os.replace(tmp, path)
            fsync_file(path.with_name(name + ".pub"))
            fsync_dir(directory)
        paths.append(path)
    return paths


def host_key_fingerprints(directory: Path) -> list[tuple[str, str]]:
    """(algorithm, SHA256 fingerprint) of each host key, as `ssh-keygen -l` prints them."""
    import asyncssh

    result = []
    for path in ensure_host_keys(directory):
        key = asyncssh.read_private_key(str(path))
        result.append((key.get_algorithm(), key.get_fingerprint("sha256")))
    return result
