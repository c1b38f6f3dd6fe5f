"""SSH host keys: Ed25519 and RSA-3072 (old client libraries in legacy software speak only RSA)."""

from __future__ import annotations

from pathlib import Path

from gateway.folders import write_durably

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
            # durably: a power cut must not leave an empty key that stops the door starting
            write_durably(path.with_name(name + ".pub"), key.export_public_key("openssh"))
            write_durably(path, key.export_private_key("openssh"), tmp=path.with_suffix(".tmp"), mode=0o600)
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
