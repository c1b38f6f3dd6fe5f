"""`flam-gateway`: parses arguments, calls the admin operations and the service, prints tables or JSON.

The commands live by subject: ``directory`` (organs, their keys, routes), ``keys`` (the gateway's own keys),
``running`` (init, serve, status, check, settings, fsck, purge, demo) and ``views`` (transfers, audit); ``output`` holds
what they share.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Sequence
from pathlib import Path

import click
from sqlalchemy.exc import OperationalError

from gateway.cli import directory, keys, running, views
from gateway.cli.output import error
from gateway.clock import system_clock
from gateway.config import load_settings
from gateway.errors import GatewayError
from gateway.ledger.store import ledger_unavailable
from gateway.service import Gateway


@click.group()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data directory (default: $FLAM_GATEWAY_HOME or ./gateway-data).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="TOML config file (see config/gateway.example.toml).",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, config_file: Path | None) -> None:
    """flam-gateway: the secure file-drop exchange between FlaM execution bodies."""
    settings = load_settings(config_file, data_dir)
    # serve's own events are the gateway's (and its door's name the client); every other command acts for its admin
    gateway = Gateway(settings, system_clock, actor=None if ctx.invoked_subcommand == "serve" else admin_account())
    ctx.obj = gateway
    ctx.call_on_close(gateway.close)


def admin_account() -> str:
    """The account running this command, as the audit trail names it: ``cli alice``, or ``cli root (sudo by
    alice)`` when an admin ran it through sudo (SUDO_USER says who; the account itself comes from the kernel)."""
    uid = os.getuid()
    try:
        account = pwd.getpwuid(uid).pw_name
    except KeyError:
        account = f"uid {uid}"
    behind = os.environ.get("SUDO_USER", "")
    return (f"cli {account}" + (f" (sudo by {behind})" if behind and behind != account else ""))[:80]


for _subject in (directory, keys, running, views):
    for _command in _subject.COMMANDS:
        cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="flam-gateway", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except OperationalError as exc:  # the database went away, or its disk is full, in the middle of the command
        error(ledger_unavailable(exc))
    except GatewayError as exc:
        error(exc)
    sys.exit(code if isinstance(code, int) else 0)
