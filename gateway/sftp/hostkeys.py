"""SSH host keys: Ed25519 and RSA-3072 (old client libraries in legacy software speak only RSA), and their rotation.

The door presents one key per type, the keys *in use*, named in ``in-use`` (without that file: the two that
``init`` made). Every other key in the folder is *announced*: the door tells OpenSSH clients of it after their
login (``hostkeys-00@openssh.com``, which OpenSSH's ``UpdateHostKeys`` writes to known_hosts) and proves it owns
it, so that the organs know a new key before the door presents it, and forget an old one once it is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from gateway.errors import AdminError, GatewayFault
from gateway.folders import fsync_dir, write_durably

KEY_TYPES = {"ed25519": ("ssh-ed25519", {}), "rsa": ("ssh-rsa", {"key_size": 3072})}
FIRST_KEYS = ("ssh_host_ed25519_key", "ssh_host_rsa_key")  # what `init` makes, in use until another is `use`d
IN_USE = "in-use"


@dataclass(frozen=True)
class HostKey:
    """One host key pair in the data dir, its algorithm and fingerprint as ``ssh-keygen -l`` shows them."""

    file: str
    algorithm: str
    fingerprint: str
    in_use: bool


def ensure_host_keys(directory: Path) -> None:
    """Generate the first host keys once (0600), for `init` and `serve`: later calls leave them, so fingerprints
    stay stable. HOST_KEY_MISSING where a key in use has gone since."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    making = directory / ".making"  # until in-use names them: a run killed in between makes the rest next time
    if making.exists() or (not (directory / IN_USE).exists() and not any(directory.glob("ssh_host_*"))):
        making.touch()
        fsync_dir(directory)
        for name, key_type in zip(FIRST_KEYS, KEY_TYPES, strict=True):
            if not (directory / name).exists():
                _generate(directory / name, key_type)
        _write_in_use(directory, list(FIRST_KEYS))
        making.unlink()
    in_use = _in_use(directory)  # HOST_KEY_MISSING where a key in use has gone
    if not (directory / IN_USE).exists():  # a data dir from before rotation: its two keys named, once
        _write_in_use(directory, in_use)


def host_key_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """The host keys in use (the door presents them) and those announced besides; never makes one (a key that
    is missing is HOST_KEY_MISSING: one made here would be a new key nobody was told of)."""
    in_use = _in_use(directory)
    return [directory / n for n in in_use], [directory / n for n in _key_files(directory) if n not in in_use]


def host_keys(directory: Path) -> list[HostKey]:
    """Every host key, those in use first."""
    import asyncssh  # only the door and these one-offs need it: other processes stay without it

    in_use, announced = host_key_files(directory)
    result = []
    for path in in_use + announced:
        key = asyncssh.read_private_key(str(path))
        result.append(HostKey(path.name, key.get_algorithm(), key.get_fingerprint("sha256"), path in in_use))
    return result


def add_host_key(directory: Path, key_type: str, now: datetime) -> HostKey:
    """Generate a host key of ``key_type`` beside those in use: announced from now on, presented once `use`d."""
    host_key_files(directory)  # the keys in use are all there
    stem = f"ssh_host_{key_type}_key-{now:%Y%m%d%H%M%S}"
    name, n = stem, 1
    while (directory / name).exists():
        n += 1
        name = f"{stem}-{n}"
    _generate(directory / name, key_type)
    return next(k for k in host_keys(directory) if k.file == name)


def use_host_key(directory: Path, fingerprint: str) -> tuple[HostKey, HostKey]:
    """Present the host key ``fingerprint`` from now on instead of the one in use of its type, which stays
    announced; returns (the key now in use, the one before)."""
    keys = host_keys(directory)
    key = _find(keys, fingerprint)
    before = next(k for k in keys if k.in_use and k.algorithm == key.algorithm)
    if key == before:
        return key, key
    _write_in_use(directory, [key.file if k == before else k.file for k in keys if k.in_use])
    return replace(key, in_use=True), replace(before, in_use=False)


def remove_host_key(directory: Path, fingerprint: str) -> HostKey:
    """Destroy a host key that is not in use (announced clients drop it from known_hosts at their next login)."""
    key = _find(host_keys(directory), fingerprint)
    if key.in_use:
        raise AdminError(
            "HOST_KEY_IN_USE",
            f"{key.fingerprint} is the {key.algorithm} host key the door presents: `host-key use` another key first",
        )
    for path in (directory / f"{key.file}.pub", directory / key.file):  # as `_generate` made them, backwards
        path.unlink(missing_ok=True)
    fsync_dir(directory)
    return key


def _find(keys: list[HostKey], fingerprint: str) -> HostKey:
    wanted = fingerprint.strip()
    wanted = wanted if wanted.startswith("SHA256:") else f"SHA256:{wanted}"
    key = next((k for k in keys if k.fingerprint == wanted), None)
    if key is None:
        raise AdminError(
            "HOST_KEY_UNKNOWN",
            f"{wanted} is not a host key of the gateway: `host-key fingerprints` shows them (SHA256:…)",
        )
    return key


def _in_use(directory: Path) -> list[str]:
    try:
        names = (directory / IN_USE).read_text("ascii").split()
    except FileNotFoundError:
        names = list(FIRST_KEYS)
    if not names:  # being rewritten (a copy from another node), or emptied: the door keeps the keys it has
        raise GatewayFault(f"{directory / IN_USE} names no host key", code="HOST_KEY_MISSING")
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise GatewayFault(
            f"the host key {directory / missing[0]} that the door presents is missing: restore it (and {IN_USE}) "
            f"from the backup, or name the keys to present in {directory / IN_USE}, one file name a line",
            code="HOST_KEY_MISSING",
        )
    return names


def _write_in_use(directory: Path, names: list[str]) -> None:
    write_durably(directory / IN_USE, "".join(f"{n}\n" for n in names).encode("ascii"), mode=0o600)


def _key_files(directory: Path) -> list[str]:
    return sorted(p.name[: -len(".pub")] for p in directory.glob("ssh_host_*_key*.pub") if p.with_suffix("").is_file())


def _generate(path: Path, key_type: str) -> None:
    import asyncssh

    algorithm, options = KEY_TYPES[key_type]
    key = asyncssh.generate_private_key(algorithm, **options)
    # durably, the public key last: a power cut must leave neither an empty key that stops the door starting nor a
    # public key without its private one (`_key_files` names a key by its .pub)
    write_durably(path, key.export_private_key("openssh"), tmp=path.with_name(f".{path.name}.tmp"), mode=0o600)
    write_durably(path.with_name(path.name + ".pub"), key.export_public_key("openssh"))
