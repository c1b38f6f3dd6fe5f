"""A whole gateway in a temporary folder, driven through its real CLI: for the demo, tests and benchmarks.

Each organ gets its own SSH key pair and its own GnuPG home (the recipient's side: it decrypts what it
finds in its inbox and verifies the gateway's signature). ``serve`` runs as a real subprocess.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import asyncssh
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from gateway.crypto import Decrypted, Keyring, decrypt_file, export_public_key, generate_key
from gateway.ledger.models import Transfer
from gateway.ledger.store import Ledger
from gateway.resources import load_schema


@contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL schema in ``database_url``'s database, dropped afterwards: its URL."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # survives a restart
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in database_url else "?"
        try:
            yield f"{database_url}{sep}options=-csearch_path%3D{schema}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()


def wait_until(predicate: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll ``predicate`` every 50 ms until it returns something truthy (returned); TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


_READY = re.compile(r"flam-gateway ready: (?:SFTP on [^ ]+:(\d+)|no SFTP)")


_SSH_OPTIONS = (
    "BatchMode=yes",
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
    "IdentitiesOnly=yes",
    "LogLevel=ERROR",
)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc's children lists."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return found


def ssh_options(key: Path) -> list[str]:
    """OpenSSH client options for a scripted login to a local test server with ``key`` (no host key checks)."""
    return [arg for option in _SSH_OPTIONS for arg in ("-o", option)] + ["-i", str(key)]


def openssh_sftp(
    port: int, user: str, key: Path, commands: str | bytes, timeout: float = 60
) -> subprocess.CompletedProcess[Any]:
    """Run the OpenSSH `sftp` client in batch mode against 127.0.0.1:``port``: each line of ``commands`` in turn,
    stopping at the first that fails (the exit code then is not 0). Bytes in, bytes out: names in any encoding."""
    return subprocess.run(
        ["sftp", *ssh_options(key), "-P", str(port), "-b", "-", f"{user}@127.0.0.1"],
        input=commands,
        capture_output=True,
        text=isinstance(commands, str),
        timeout=timeout,
    )


def read_receipt(path: Path) -> dict[str, Any]:
    """A receipt as its recipient's software reads it; AssertionError if it breaks schemas/receipt.schema.json."""
    from jsonschema import Draft202012Validator

    from gateway.handlers.validate import format_checker  # the real date checks, or it refuses to run

    receipt = json.loads(path.read_text())
    schema = Draft202012Validator(load_schema("receipt.schema.json"), format_checker=format_checker())
    wrong = [f"{e.json_path}: {e.message}" for e in schema.iter_errors(receipt)]
    assert not wrong, f"{path.name} breaks the receipt schema: {wrong}"
    return receipt


def plain_gpg_decrypt(home: Path, path: Path) -> tuple[bytes, str | None]:
    """What a recipient with nothing but `gpg` does: decrypt, and read who made the good signature."""
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--status-fd", "2", "--decrypt", str(path)],
        capture_output=True,
        check=True,
    )
    status = [line.split() for line in done.stderr.decode("utf-8", "replace").splitlines()]
    valid = [words[2] for words in status if words[:2] == ["[GNUPG:]", "VALIDSIG"]]
    return done.stdout, valid[0] if valid else None


# Each admin command a process of its own, forked from a server that imported what the CLI needs once (see
# Sandbox.cli). Not `gateway.cli` itself: its consoles read COLUMNS from the environment when imported, and
# the command's environment is set only in the child, which imports it (14 ms); the fork server's own may hold
# COLUMNS=80 (GNU readline, which pytest imports, exports it to child processes). As in any multiprocessing fork
# server, each child imports the program's main script again: a script using the harness keeps its work under
# `if __name__ == "__main__"`.
_CLI_FORKS = multiprocessing.get_context("forkserver")
_CLI_FORKS.set_forkserver_preload(["gateway.harness", "gateway.service", "gateway.admin", "click", "rich.table"])


def _run_cli(args: list[str], env: dict[str, str], output: str) -> None:
    """In a child of the fork server: `flam-gateway ARGS` in ``env``, its stdout and stderr into ``output``.out
    and ``output``.err; it exits with the CLI's own code."""
    os.environ.clear()
    os.environ.update(env)
    for fd, suffix in ((1, ".out"), (2, ".err")):
        target = os.open(output + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    from gateway.cli import main

    main(args)


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""


@dataclass(frozen=True)
class OrganKeys:
    """An organ of the sandbox and the keys only it holds."""

    id: str
    ssh_key: Path  # OpenSSH private key file (the .pub beside it was given to the gateway)
    gnupg: Path  # its own GnuPG home, holding its secret key
    fingerprint: str


class Sandbox:
    """A data dir, organs with keys, and a `flam-gateway serve` subprocess."""

    def __init__(self, root: Path | None = None, *, database_url: str = "", settings: dict[str, Any] | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="fg-", dir="/tmp"))
        self.data_dir = self.root / "data"
        self.env = {**os.environ, "FLAM_GATEWAY_HOME": str(self.data_dir), "FLAM_GATEWAY_DATABASE_URL": database_url}
        self.env.pop("NOTIFY_SOCKET", None)
        self.env["COLUMNS"] = "250"  # the CLI's tables as wide as their values: no cell folded over two lines
        for key, value in (settings or {}).items():
            self.env[f"FLAM_GATEWAY_{key.upper()}"] = str(value)
        self.organs: dict[str, OrganKeys] = {}
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self._ledger: Ledger | None = None
        self.log = self.root / "serve.log"

    # -- admin through the CLI --------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `flam-gateway ARGS` as an admin would; raises with its output when it fails and ``check``.

        The command runs in a process of its own with the sandbox's environment, forked from a server that
        imported the CLI's dependencies once: a new interpreter would import them again for each command, and
        Python's start-up and those imports (mostly SQLAlchemy) cost 0.7–1.7 s, where most commands then take
        0.1 s. What `flam-gateway` itself does at start-up is run by `serve` and by the tests that call it by name.
        """
        with tempfile.TemporaryDirectory(prefix="fg-cli-") as folder:  # not in the sandbox: its disk may be full
            output = f"{folder}/cli"
            child = _CLI_FORKS.Process(target=_run_cli, args=(list(args), self.env, output), name="flam-gateway")
            child.start()
            child.join(120)
            if child.exitcode is None:
                child.kill()
                child.join()
                raise subprocess.TimeoutExpired(["flam-gateway", *args], 120)
            out, err = (Path(output + suffix).read_text() for suffix in (".out", ".err"))
        done = subprocess.CompletedProcess(["flam-gateway", *args], child.exitcode, out, err)
        if check and done.returncode != 0:
            raise RuntimeError(f"flam-gateway {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def add_organ(self, organ_id: str, kind: str, *, name: str | None = None) -> OrganKeys:
        """Register an organ with fresh SSH and OpenPGP keys."""
        self.cli("organ", "add", organ_id, "--kind", kind, "--name", name or organ_id.upper())
        return self.add_organ_keys(organ_id)

    def add_organ_keys(self, organ_id: str) -> OrganKeys:
        """Give an organ a fresh SSH key pair and OpenPGP key pair; the gateway gets the public halves."""
        keys_dir = self.root / "keys" / organ_id
        keys_dir.mkdir(parents=True, exist_ok=True)
        ssh_key = keys_dir / "id_ed25519"
        key = asyncssh.generate_private_key("ssh-ed25519", comment=organ_id)
        key.write_private_key(str(ssh_key))
        key.write_public_key(str(ssh_key) + ".pub")
        ssh_key.chmod(0o600)
        gnupg = self.root / "g" / organ_id[:12]
        fingerprint = generate_key(gnupg, organ_id, f"{organ_id}@organs.invalid")
        (keys_dir / "pgp.asc").write_text(export_public_key(gnupg, fingerprint))
        with Keyring(gnupg) as ring:  # the organ learns the key that signs its deliveries
            ring.import_key(self.gateway_public_key)
        self.cli("organ", "pgp-key", "import", organ_id, str(keys_dir / "pgp.asc"))
        self.cli("organ", "ssh-key", "add", organ_id, str(ssh_key) + ".pub")
        self.organs[organ_id] = OrganKeys(organ_id, ssh_key, gnupg, fingerprint)
        return self.organs[organ_id]

    @cached_property
    def gateway_public_key(self) -> str:
        """The key that signs deliveries, as `flam-gateway gateway-key export` gives it to organs (asked once)."""
        return self.cli("gateway-key", "export").stdout

    def gateway_fingerprint(self) -> str:
        """The fingerprint of the key that signs deliveries, as `flam-gateway init` reports it."""
        return self.cli("init").stdout.rsplit("gateway OpenPGP key", 1)[1].split()[0]

    def allow(self, sender: str, recipient: str) -> None:
        self.cli("route", "allow", sender, recipient)

    def init_pair(self, sender: str, recipient: str) -> None:
        """``init``, then a control body ``sender`` allowed to send to a joint committee ``recipient``."""
        self.cli("init")
        self.add_organ(sender, "control_body")
        self.add_organ(recipient, "joint_committee")
        self.allow(sender, recipient)

    # -- the service ------------------------------------------------------------------------------------

    def start(self, listen: str = "127.0.0.1:0", timeout: float = 60) -> int | None:
        """Start `flam-gateway serve` and wait until it says it is ready; returns the SFTP port."""
        log = open(self.log, "a")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--listen", listen],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (match := _READY.search(self.log.read_text(errors="replace").split("--- start ---")[-1])) is not None:
                self.port = int(match.group(1)) if match.group(1) else None
                return self.port
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"serve not ready in {timeout} s:\n{self.log.read_text()}")

    def metrics_url(self) -> str:
        """The metrics endpoint the running `serve` named in its ready line."""
        return re.findall(r"metrics on (https?://[^\s,]+)", self.log.read_text(errors="replace"))[-1]

    def metrics(self, tls: ssl.SSLContext | None = None) -> dict[str, float]:
        """Scrape the metrics endpoint as Prometheus would (``tls``: its client side of HTTPS):
        {'name{label="value"}': value}."""
        with urllib.request.urlopen(f"{self.metrics_url()}/metrics", timeout=10, context=tls) as response:
            text = response.read().decode()
        samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
        return {s.name + _labels(s.labels): s.value for s in samples}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the service (SIGTERM: cleanly; SIGKILL: as a crash would); returns its exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        with open(self.log, "a") as log:
            log.write("\n--- start ---\n")
        self.process = None
        return code

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self.close_ledger()
        for organ in self.organs.values():
            subprocess.run(["gpgconf", "--homedir", str(organ.gnupg), "--kill", "gpg-agent"], capture_output=True)
        subprocess.run(
            ["gpgconf", "--homedir", str(self.data_dir / "gnupg"), "--kill", "gpg-agent"], capture_output=True
        )
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what organs see ---------------------------------------------------------------------------------

    def folder(self, organ_id: str, name: str) -> Path:
        return self.data_dir / "organs" / organ_id / name

    def drop(self, organ_id: str, name: str, data: bytes) -> Path:
        """Software on the gateway host exports a file: write under a temp name, then rename into the outbox."""
        outbox = self.folder(organ_id, "outbox")
        tmp = outbox / f".{name}.tmp"
        tmp.write_bytes(data)
        return tmp.rename(outbox / name)

    def receipts(self, organ_id: str) -> list[dict[str, Any]]:
        """The receipts in the organ's folder, each checked against schemas/receipt.schema.json."""
        folder = self.folder(organ_id, "receipts")
        return [read_receipt(p) for p in sorted(folder.glob("*.receipt.json"))]

    def decrypt(self, organ_id: str, path: Path) -> Decrypted:
        """The recipient decrypts a delivery with its own key and checks who signed it."""
        return decrypt_file(self.organs[organ_id].gnupg, path)

    # -- the ledger --------------------------------------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            url = self.env["FLAM_GATEWAY_DATABASE_URL"] or f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"
            self._ledger = Ledger(url)
        return self._ledger

    def close_ledger(self) -> None:
        """Let go of the ledger (it is opened again when next asked for): nothing of this process holds the data dir."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def transfers(self) -> list[Transfer]:
        return self.ledger.transfers()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
        """Poll ``predicate`` until it returns something truthy; fail with the service log otherwise."""

        def answer() -> Any:
            if (result := predicate()) or self.process is None or self.process.poll() is None:
                return result
            raise RuntimeError(f"serve died while waiting for {what}:\n{self.log.read_text()[-4000:]}")

        try:
            return wait_until(answer, timeout, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.log.read_text()[-4000:]}") from None

    def wait_transfer(self, name: str, state: str, timeout: float = 60) -> Transfer:
        """Wait until the file ``name`` has a transfer in ``state`` whose receipts are all written."""

        def found() -> Transfer | None:
            rows = [t for t in self.transfers() if t.file_name == name and t.state == state]
            return rows[0] if rows and not self.ledger.due_receipts(rows[0].id) else None

        return self.wait_for(found, timeout, f"{name} {state}")

    def wait_settled(self, count: int, timeout: float = 120) -> list[Transfer]:
        """Wait until ``count`` transfers exist, none is still being worked on, and every receipt is written."""
        open_states = {"received", "validated", "encrypted"}

        def settled() -> bool:
            states = self.ledger.count_by_state()
            busy = sum(n for state, n in states.items() if state in open_states)
            return sum(states.values()) >= count and not busy and not self.ledger.due_receipts()

        self.wait_for(settled, timeout, f"{count} settled transfers")
        return self.transfers()
