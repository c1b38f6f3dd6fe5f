"""The door's SSH host key replaced without an organ's nightly batch failing.

An organ's OpenSSH client checks the host key against its known_hosts file (docs/organs.md). The door announces a
new key after each login (hostkeys-00@openssh.com), so that OpenSSH's UpdateHostKeys writes it to known_hosts
before the door presents it, and it drops an old key from there once the admin has removed it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from gateway import harness
from gateway.errors import GatewayFault
from gateway.harness import Sandbox
from gateway.sftp.hostkeys import ensure_host_keys, host_key_files

KV, PK = "kv-bau-zh", "pk-bau-zh"


def nightly_sftp(box: Sandbox, known_hosts: Path, strict: str = "yes") -> subprocess.CompletedProcess[str]:
    """The organ's nightly run: OpenSSH's `sftp`, checking the host key against its own known_hosts."""
    options = ["BatchMode=yes", "IdentitiesOnly=yes", "UpdateHostKeys=yes", f"StrictHostKeyChecking={strict}"]
    options += [f"UserKnownHostsFile={known_hosts}", f"IdentityFile={box.organs[KV].ssh_key}", f"Port={box.port}"]
    return subprocess.run(
        ["sftp", *(a for o in options for a in ("-o", o)), "-b", "-", f"{KV}@127.0.0.1"],
        input="ls /outbox\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def fingerprints_in(known_hosts: Path) -> set[str]:
    listed = subprocess.run(["ssh-keygen", "-lf", str(known_hosts)], capture_output=True, text=True, check=True)
    return {line.split()[1] for line in listed.stdout.splitlines()}


def presented(box: Sandbox) -> str:
    """The fingerprint of the Ed25519 key the door presents, as a new client sees it."""
    transport = paramiko.Transport(("127.0.0.1", box.port))
    try:
        transport.get_security_options().key_types = ["ssh-ed25519"]
        transport.start_client(timeout=10)
        return f"SHA256:{transport.get_remote_server_key().fingerprint.split(':', 1)[1]}"
    finally:
        transport.close()


def host_keys(box: Sandbox) -> dict[str, tuple[str, str]]:
    """Fingerprint -> (algorithm, state), as `host-key fingerprints` shows them."""
    rows = json.loads(box.cli("host-key", "fingerprints", "--json").stdout)
    return {row["fingerprint"]: (row["algorithm"], row["state"]) for row in rows}


def test_the_host_key_is_replaced_without_an_organ_s_nightly_batch_failing(tmp_path: Path) -> None:
    box = Sandbox(root=tmp_path / "gw")
    try:
        box.init_pair(KV, PK)
        box.start()
        first = host_keys(box)
        [old] = [f for f, (alg, _) in first.items() if alg == "ssh-ed25519"]
        [rsa] = [f for f, (alg, _) in first.items() if alg == "ssh-rsa"]
        assert set(first.values()) == {("ssh-ed25519", "in use"), ("ssh-rsa", "in use")}

        # the organ's first run pins the key it is shown; its second learns the door's RSA key too (proven with
        # SHA-2: OpenSSH disregards an RSA key proven with SHA-1, as asyncssh did at first)
        nightly, away = tmp_path / "known_hosts", tmp_path / "known_hosts_of_an_organ_away"
        assert nightly_sftp(box, nightly, strict="accept-new").returncode == 0
        assert fingerprints_in(nightly) == {old}
        away.write_bytes(nightly.read_bytes())  # an organ that does not connect while the key is replaced
        assert nightly_sftp(box, nightly).returncode == 0
        assert fingerprints_in(nightly) == {old, rsa}

        # 1. a new key: announced within seconds, learned by the organ's next run, not presented yet
        done = box.cli("host-key", "add")
        [new] = [f for f in host_keys(box) if f not in first]
        assert f"host-key use {new}" in " ".join(done.stdout.split())
        assert host_keys(box)[new] == ("ssh-ed25519", "announced")
        box.wait_for(
            lambda: nightly_sftp(box, nightly).returncode == 0 and new in fingerprints_in(nightly),
            what="the organ's known_hosts to learn the new key",
        )
        assert presented(box) == old

        # 2. the door presents the new key: the organ that learned it goes on, the one away is refused
        box.cli("host-key", "use", new.removeprefix("SHA256:"))  # with or without SHA256:
        box.wait_for(lambda: presented(box) == new, what="the door to present the new key")
        assert (host_keys(box)[new], host_keys(box)[old]) == (("ssh-ed25519", "in use"), ("ssh-ed25519", "announced"))
        assert "already" in box.cli("host-key", "use", new).stdout  # and no second event
        in_use = box.data_dir / "hostkeys" / "in-use"
        chosen = in_use.read_text()
        with in_use.open("w") as fh:  # rewritten in place, as `cp` from another node does: the door was blind to it
            fh.write(chosen.replace(next(n for n in chosen.split() if "ed25519" in n), "ssh_host_ed25519_key"))
        box.wait_for(lambda: presented(box) == old, what="the door to take the rewritten in-use")
        with in_use.open("w") as fh:
            fh.write(chosen)
        box.wait_for(lambda: presented(box) == new, what="the door to take it back")
        assert nightly_sftp(box, nightly).returncode == 0
        refused = nightly_sftp(box, away)
        assert refused.returncode != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr

        # 3. the old key removed: the next run drops it from known_hosts; the keys in use cannot be removed
        for fingerprint, told in ((new, "HOST_KEY_IN_USE"), (rsa, "HOST_KEY_IN_USE"), ("nope", "HOST_KEY_UNKNOWN")):
            done = box.cli("host-key", "remove", fingerprint, check=False)
            assert done.returncode == 2 and done.stderr.startswith(f"error {told}: "), done.stderr
        box.cli("host-key", "remove", old)
        assert old not in host_keys(box)
        box.wait_for(
            lambda: nightly_sftp(box, nightly).returncode == 0 and fingerprints_in(nightly) == {new, rsa},
            what="the organ's known_hosts to forget the old key",
        )

        # the choice outlives a restart, and every step is in the audit trail
        box.stop()
        box.start(listen=f"127.0.0.1:{box.port}")  # known_hosts names the port
        assert presented(box) == new and nightly_sftp(box, nightly).returncode == 0
        assert harness.openssh_sftp(box.port, KV, box.organs[KV].ssh_key, "ls /inbox\n").returncode == 0
        events = json.loads(box.cli("audit", "list", "--action", "host_key_added", "--json").stdout)
        events += json.loads(box.cli("audit", "list", "--action", "host_key_used", "--json").stdout)
        events += json.loads(box.cli("audit", "list", "--action", "host_key_removed", "--json").stdout)
        assert [e["detail"] for e in events] == [
            f"ssh-ed25519 {new}; announced, not presented yet",
            f"ssh-ed25519 {new} presented; {old} announced",
            f"ssh-ed25519 {old}",
        ]

        # a key in use lost (a restore that missed it): the door does not start with a new key nobody was told of
        box.stop()
        [new_file] = [n for n in (box.data_dir / "hostkeys" / "in-use").read_text().split() if "ed25519" in n]
        (box.data_dir / "hostkeys" / new_file).unlink()
        with pytest.raises(RuntimeError) as told:
            box.start()
        assert "error HOST_KEY_MISSING: the host key " in str(told.value) and "Traceback" not in str(told.value)
    finally:
        box.close()


def test_a_host_key_in_use_that_has_gone_is_never_made_again_and_a_killed_init_finishes(tmp_path: Path) -> None:
    first = tmp_path / "first"
    ensure_host_keys(first)  # what `init` makes: the two keys, named in in-use
    assert (first / "in-use").read_text().split() == ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
    older = tmp_path / "older"  # a data dir made before rotation came: no in-use; its Ed25519 key lost
    shutil.copytree(first, older)
    (older / "in-use").unlink()
    (older / "ssh_host_ed25519_key").unlink()
    with pytest.raises(GatewayFault, match="ssh_host_ed25519_key that the door presents is missing"):
        ensure_host_keys(older)  # before: it made a new key, which every organ's client would refuse
    killed = tmp_path / "killed"  # the first `init`, killed between its two keys: nobody has seen either yet
    shutil.copytree(first, killed)
    for gone in ("in-use", "ssh_host_rsa_key", "ssh_host_rsa_key.pub"):
        (killed / gone).unlink()
    (killed / ".making").touch()
    ensure_host_keys(killed)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in first.iterdir())
    (first / "in-use").write_text("")  # as a copy from another node has it for a moment
    with pytest.raises(GatewayFault, match="names no host key"):
        host_key_files(first)  # the door keeps the keys it has
