"""An admin's mistakes are told in one line, `error CODE: message`, exit 2, never a traceback: a ledger that
cannot be opened, a setting out of range, an address that is not HOST:PORT, an option the command does not take."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway import samples
from gateway.harness import Sandbox, wait_until


@pytest.mark.parametrize(
    ("database_url", "told"),
    [
        ("", "unable to open database file (does the data dir exist? `flam-gateway init` creates it)"),
        ("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test", "postgres:***@127.0.0.1:1/test: connection failed"),
        ("postgres://postgres@127.0.0.1/test", "or PostgreSQL (postgresql+psycopg://USER@HOST/DATABASE)"),
    ],
    ids=["data-dir-never-made", "database-down", "url-misspelt"],
)
def test_an_admin_whose_ledger_cannot_be_opened_is_told_why_in_one_line(
    tmp_path: Path, database_url: str, told: str
) -> None:
    box = Sandbox(root=tmp_path, database_url=database_url)  # the data dir is never made: no `init`
    done = box.cli("organ", "list", check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error LEDGER_UNAVAILABLE: cannot open the ledger at "), done.stderr
    assert told in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "s3cret" not in done.stderr, "a password in the URL is never shown"


def test_a_data_dir_never_made_beside_a_postgresql_ledger_is_named_and_nothing_is_made_there(
    tmp_path: Path, pg_url: str
) -> None:
    """A second node's admin with a mistyped data dir: the shared ledger opens, the data dir is not there. `status`
    and `fsck` ended in a traceback, the others made keys and folders where nothing belonged, and `serve` started a
    node with a gateway key and host keys of its own."""
    first = Sandbox(root=tmp_path / "first", database_url=pg_url)
    box = Sandbox(root=tmp_path / "second", database_url=pg_url, settings={"max_message_bytes": 1_000_000})
    try:
        first.cli("init")
        first.cli("organ", "add", "kv-bau-zh", "--kind", "control_body", "--name", "KV")
        told = (
            f"error DATA_DIR_MISSING: no data dir at {box.data_dir}: `flam-gateway init` makes one (or do --data-dir "
            "and FLAM_GATEWAY_HOME name the one you meant?)\n"
        )
        for args in (
            ("status",),
            ("fsck",),
            ("purge",),
            ("organ", "add", "pk-bau-zh", "--kind", "joint_committee", "--name", "PK"),
            ("gateway-key", "list"),
            ("host-key", "fingerprints"),
            ("serve", "--listen", ""),
        ):
            done = box.cli(*args, check=False)
            assert (done.returncode, done.stderr) == (2, told), args
        assert not box.data_dir.exists(), "no keys or folders made in the wrong place"
        box.cli("init")  # a new node, made on purpose
        assert "data dir:" in box.cli("status").stdout
        assert box.folder("kv-bau-zh", "outbox").is_dir()
    finally:
        first.close()
        box.close()


@pytest.mark.parametrize(
    ("settings", "args", "told"),
    [
        ({"workers": "-1"}, ("organ", "list"), "setting 'workers': -1 is out of range (it must be 0 or more)"),
        ({"rescan_seconds": "0"}, ("organ", "list"), "'rescan_seconds': 0.0 is out of range (it must be greater"),
        ({"rescan_seconds": "nan"}, ("organ", "list"), "setting 'rescan_seconds': nan is out of range"),
        ({"settle_seconds": "-1"}, ("organ", "list"), "setting 'settle_seconds': -1.0 is out of range (it must be 0"),
        ({"listen": "localhost"}, ("organ", "list"), "setting 'listen': 'localhost' is not HOST:PORT"),
        ({}, ("serve", "--listen", "2222"), "setting 'listen': '2222' is not HOST:PORT"),
        ({"metrics_tls_cert": "/etc/x.crt"}, ("serve",), "'metrics_tls_cert' and 'metrics_tls_key' go together"),
        ({"metrics_client_ca": "/etc/ca.crt"}, ("serve",), "'metrics_client_ca' needs 'metrics_tls_cert' and"),
    ],
    ids=[
        "workers-negative",
        "rescan-zero",
        "rescan-nan",
        "settle-negative",
        "listen-no-port",
        "serve-listen-no-host",
        "metrics-cert-without-key",
        "metrics-client-ca-without-tls",
    ],
)
def test_a_setting_out_of_range_is_refused_before_anything_runs(
    tmp_path: Path, settings: dict[str, str], args: tuple[str, ...], told: str
) -> None:
    box = Sandbox(root=tmp_path, settings=settings)
    done = box.cli(*args, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error CONFIG_INVALID: ") and told in done.stderr, done.stderr
    assert not (tmp_path / "data").exists(), "refused before the data dir is made"


@pytest.mark.parametrize(
    ("args", "told"),
    [
        (("serve", "--log-level", "chatty"), "Invalid value for '--log-level'"),
        (("audit", "list", "--limit", "0"), "Invalid value for '--limit'"),
    ],
    ids=["log-level", "audit-limit"],
)
def test_an_option_the_command_cannot_take_is_refused_with_its_name(
    tmp_path: Path, args: tuple[str, ...], told: str
) -> None:
    done = Sandbox(root=tmp_path).cli(*args, check=False)
    assert done.returncode == 2 and told in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_organ_id_or_name_a_route_an_ssh_key_or_a_filter_the_gateway_cannot_take_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    box = Sandbox(root=tmp_path, settings={"listen": ""})
    try:
        box.cli("init")
        done = box.cli("organ", "add", "../kv", "--kind", "control_body", "--name", "KV", check=False)
        assert done.returncode == 2, done.stdout
        assert done.stderr == "error ORGAN_ID: organ id '../kv' must match ^[a-z0-9][a-z0-9-]{1,62}$\n", done.stderr
        done = box.cli("organ", "add", "kv-bau\n", "--kind", "control_body", "--name", "KV", check=False)
        assert done.stderr.startswith("error ORGAN_ID: organ id 'kv-bau\\n' must match"), "a folder named kv-bau\\n"
        for name in ("", "N" * 201, "Tessin\x1b[31m"):  # PostgreSQL's column ended the first try with a traceback
            done = box.cli("organ", "add", "canton-ti", "--kind", "canton", "--name", name, check=False)
            assert done.returncode == 2 and done.stderr.startswith("error ORGAN_NAME: organ name "), done.stderr
            assert "must be 1 to 200 printable characters" in " ".join(done.stderr.split())
        box.cli("organ", "add", "kv-bau-zh", "--kind", "control_body", "--name", "KV")
        done = box.cli("route", "allow", "kv-bau-zh", "kv-bau-zh", check=False)
        assert (done.returncode, done.stderr) == (
            2,
            "error ROUTE_SELF: kv-bau-zh would send to itself: a route joins two organs\n",
        )
        private = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)], check=True)
        done = box.cli("organ", "ssh-key", "add", "kv-bau-zh", str(private), check=False)
        assert done.returncode == 2 and done.stderr.startswith(f"error SSH_KEY_PRIVATE: {private} is a private key")
        box.cli("organ", "ssh-key", "add", "kv-bau-zh", f"{private}.pub")
        for view in (("transfers", "list"), ("audit", "list")):
            done = box.cli(*view, "--organ", "kv-bau-zhh", check=False)
            assert (done.returncode, done.stderr) == (
                2,
                "error ORGAN_UNKNOWN: no organ 'kv-bau-zhh' (see `flam-gateway organ list`)\n",
            )
    finally:
        box.close()


def test_a_second_serve_on_a_data_dir_in_use_is_refused_and_so_is_fsck_repair_while_it_runs(tmp_path: Path) -> None:
    box = Sandbox(root=tmp_path, settings={"listen": "", "settle_seconds": 0.1})
    try:
        box.init_pair("kv-bau-zh", "pk-bau-zh")
        box.start(listen="")
        in_flight = box.data_dir / "spool" / "tmp" / "in-flight.tmp"  # the first's work: a second start swept it
        in_flight.write_bytes(b"half")
        second = box.cli("serve", "--listen", "", check=False)  # an admin trying it by hand beside systemd's
        told = f"error DATA_DIR_IN_USE: another flam-gateway serve (pid {box.process.pid}) runs on {box.data_dir}"
        assert second.returncode == 2 and second.stderr.startswith(told), second.stderr
        assert in_flight.read_bytes() == b"half"
        in_flight.unlink()
        repair = box.cli("fsck", "--repair", check=False)
        assert repair.returncode == 2 and "DATA_DIR_IN_USE" in repair.stderr, repair.stderr
        assert "runs on this data dir" in box.cli("fsck", check=False).stderr
        box.drop("kv-bau-zh", "still.json", samples.dossier_bytes(samples.make_dossier("kv-bau-zh", "pk-bau-zh")))
        assert box.wait_transfer("still.json", "delivered"), "the first serve went on untouched"
        box.stop()
        assert box.cli("fsck", "--repair").returncode == 0
    finally:
        box.close()


def test_a_database_that_goes_away_during_a_command_is_told_in_one_line(tmp_path: Path, pg_url: str) -> None:
    box = Sandbox(root=tmp_path, database_url=pg_url)
    box.init_pair("kv-bau-zh", "pk-bau-zh")
    dba = create_engine(pg_url.split("?")[0], isolation_level="AUTOCOMMIT")
    try:
        with box.ledger.engine.begin() as conn:  # another session holds the routes (a migration, a dump)
            conn.execute(text("LOCK TABLE route IN ACCESS EXCLUSIVE MODE"))
            command = subprocess.Popen(
                [sys.executable, "-m", "gateway", "route", "allow", "pk-bau-zh", "kv-bau-zh"],
                env=box.env,
                stderr=subprocess.PIPE,
            )
            waiting = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%route%'"
            with dba.connect() as admin:
                (pid,) = wait_until(lambda: admin.execute(text(waiting)).scalars().all(), 30, "the command to wait")
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})  # PostgreSQL restarts
            _, stderr = command.communicate(timeout=30)
    finally:
        dba.dispose()
    told = stderr.decode()
    assert command.returncode == 2 and "Traceback" not in told, told
    assert told.startswith("error LEDGER_UNAVAILABLE: the ledger failed during the command: ") and told.count("\n") == 1
    assert "terminating connection due to administrator command" in told, told
    box.cli("route", "allow", "pk-bau-zh", "kv-bau-zh")  # the database is back: the same command goes through
    assert {(r.sender_id, r.recipient_id) for r in box.ledger.routes()} >= {("pk-bau-zh", "kv-bau-zh")}


def test_the_admin_reads_which_settings_the_gateway_runs_with_and_where_each_comes_from(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[workers]\nworkers = 4\n\n[expiry]\nhold_days = 5\n")
    url = "postgresql+psycopg://flam:s3cret@db.example/flam"
    box = Sandbox(tmp_path / "box", database_url=url, settings={"workers": "2"})  # the unit file's environment
    done = box.cli("--config", str(config), "settings", "--json")
    rows = {row["setting"]: row for row in json.loads(done.stdout)}
    assert rows["workers"] == {"setting": "workers", "value": 2, "from": "FLAM_GATEWAY_WORKERS"}, "not the file's 4"
    assert rows["hold_days"] == {"setting": "hold_days", "value": 5.0, "from": str(config)}
    assert rows["listen"] == {"setting": "listen", "value": "127.0.0.1:2222", "from": "default"}
    assert (rows["data_dir"]["value"], rows["data_dir"]["from"]) == (str(box.data_dir), "FLAM_GATEWAY_HOME")
    assert rows["database_url"]["value"] == "postgresql+psycopg://flam:***@db.example/flam"
    assert "s3cret" not in done.stdout
    table = box.cli("--data-dir", str(tmp_path / "elsewhere"), "settings").stdout
    assert "--data-dir" in table and "s3cret" not in table
    assert not (tmp_path / "elsewhere").exists(), "reading the settings makes nothing"
