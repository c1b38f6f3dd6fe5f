"""An admin's mistakes are told in one line, `error CODE: message`, exit 2, never a traceback: a ledger that
cannot be opened, a setting out of range, an address that is not HOST:PORT, an option the command does not take."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.harness import Sandbox


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


@pytest.mark.parametrize(
    ("settings", "args", "told"),
    [
        ({"workers": "0"}, ("organ", "list"), "setting 'workers': 0 is out of range (it must be greater than 0)"),
        ({"rescan_seconds": "nan"}, ("organ", "list"), "setting 'rescan_seconds': nan is out of range"),
        ({"settle_seconds": "-1"}, ("organ", "list"), "setting 'settle_seconds': -1.0 is out of range (it must be 0"),
        ({"listen": "localhost"}, ("organ", "list"), "setting 'listen': 'localhost' is not HOST:PORT"),
        ({}, ("serve", "--listen", "2222"), "setting 'listen': '2222' is not HOST:PORT"),
    ],
    ids=["no-workers", "rescan-nan", "settle-negative", "listen-no-port", "serve-listen-no-host"],
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
