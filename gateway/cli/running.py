"""Setting up and running the gateway, and looking after it: init, serve, status, check, fsck, purge, demo."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

import click
from rich.console import Console

from gateway import admin
from gateway.cli.output import err, gateway_of, out, print_rows, progress
from gateway.config import explain_settings, without_password
from gateway.folders import power_cut_risk
from gateway.fsck import fsck
from gateway.handlers.inspect import inspect_file
from gateway.handlers.parse import shown
from gateway.health import ACTIONS_WINDOW, mib, near_quota, short_of_space, stuck
from gateway.retention import purge
from gateway.service import notify_systemd

_log = logging.getLogger(__name__)


class _EscapingFormatter(logging.Formatter):
    """The serve log's lines, with what an organ chose (a file name) unable to forge or hide one: control and
    direction characters in a message are written as escapes, a newline as ``\\n``. (Bytes that are not UTF-8 are
    escaped by Python's stderr itself; asyncssh refuses such characters in SSH user names.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message)
        return super().formatMessage(record)


def _log_to_stderr(level: str) -> None:
    """serve's log: stderr (journald under systemd), a line per message, from ``level`` up."""
    handler = logging.StreamHandler()
    handler.setFormatter(_EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


@click.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the data dir, ledger, gateway OpenPGP key pair and SSH host keys (idempotent)."""
    gw = gateway_of(ctx, made=False)
    fpr = gw.init()
    out.print(
        f"data dir {gw.folders.root}\nledger   {without_password(gw.settings.ledger_url)}\ngateway OpenPGP key {fpr}"
    )
    if (risk := power_cut_risk(gw.folders.root)) is not None:
        err.print(f"warning: {risk}")


# -- running -----------------------------------------------------------------------------------------------


@click.command()
@click.option("--listen", default=None, help="SFTP address HOST:PORT (default 127.0.0.1:2222; '' for none).")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.pass_context
def serve(ctx: click.Context, listen: str | None, log_level: str) -> None:
    """Run the gateway in the foreground (SIGTERM/SIGINT stop it cleanly)."""
    _log_to_stderr(log_level)
    if log_level.upper() != "DEBUG":
        # asyncssh logs a dozen lines per connection at INFO, with the user name a client sent as it came: a flood
        # of connections would flood the log (and journald drops a service's lines past its rate limit, the
        # gateway's own warnings with them). Logins, uploads and refusals are in the audit trail, counted there.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    gw = gateway_of(ctx, made=False)
    if listen is not None:
        gw.settings = dataclasses.replace(gw.settings, listen=listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # by default SIGHUP ends a process, and systemd's Restart=on-failure counts that as a clean stop: a habitual
    # `kill -HUP` (or a log rotation script's) would leave the gateway down for good
    signal.signal(signal.SIGHUP, lambda *_: _log.warning("SIGHUP ignored: settings are read at start only"))

    def ready() -> None:
        where = f"SFTP on {gw.settings.listen.rpartition(':')[0]}:{gw.door_port}" if gw.settings.listen else "no SFTP"
        if gw.metrics is not None:
            scheme = "https" if gw.settings.metrics_tls_cert else "http"
            where += f", metrics on {scheme}://{gw.settings.metrics_listen.rpartition(':')[0]}:{gw.metrics.server_port}"
        engine = f"OpenPGP by {gw.settings.openpgp}, key {gw.keyring.gateway_fingerprint}"
        if not gw.settings.workers:
            engine += "; deliveries paused (workers = 0): dossiers are received and wait"
        click.echo(f"flam-gateway ready: {where}, data dir {gw.folders.root}, {engine}", err=True)
        notify_systemd("READY=1")

    gw.serve(stop, ready)
    notify_systemd("STOPPING=1")


@click.command()
@click.option("--stuck-after", default=1800, show_default=True, type=click.IntRange(min=1), help="Seconds.")
@click.option(
    "--min-free-mib",
    type=click.IntRange(min=0),
    default=None,
    help="Free space the data dir's filesystem should keep [default: twice max_message_bytes, room for the largest "
    "dossier and its encrypted copy].",
)
@click.option(
    "--quota-percent",
    default=80,
    show_default=True,
    type=click.IntRange(min=1),
    help="Name the active organs that have this much of their upload quota waiting at the gateway.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, stuck_after: int, min_free_mib: int | None, quota_percent: int, as_json: bool) -> None:
    """The backlog now, for admins and monitoring: open transfers by state and how long the oldest has not moved,
    retries, receipts not yet written, the last hour's audit actions, the data dir's free space. Exit 1 when work or
    a receipt has waited longer than --stuck-after, the free space or inodes run short, or an organ is near its
    upload quota."""
    gw = gateway_of(ctx)
    now = gw.clock()
    gauges = gw.ledger.gauges(now - ACTIONS_WINDOW)
    space = gw.folders.space()
    min_free = min_free_mib * 2**20 if min_free_mib is not None else gw.settings.room_needed
    reasons = stuck(gauges, now, timedelta(seconds=stuck_after))
    short = short_of_space(space, min_free)
    full = near_quota([(o.id, n, q) for o, n, q in admin.uploads_waiting(gw) if o.active], quota_percent)
    states = [
        {"state": state, "count": n, "oldest_unmoved_since": oldest}
        for state, (n, oldest) in sorted(gauges.open_transfers.items())
    ]
    unwritten, owed_since = gauges.receipts_unwritten
    if as_json:
        report = {
            "open_transfers": states,
            "retrying": gauges.retrying,
            "receipts_unwritten": unwritten,
            "oldest_receipt_owed_since": owed_since,
            "audit_events_last_hour": gauges.actions,
            "data_dir_space": dataclasses.asdict(space),
            "stuck": reasons,
            "short_of_space": short,
            "near_quota": full,
        }
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        print_rows(states, ["state", "count", "oldest_unmoved_since"], False, "open transfers")
        out.print(f"retrying {gauges.retrying}; receipts not yet written {unwritten}")
        out.print("last hour: " + (", ".join(f"{a} {n}" for a, n in sorted(gauges.actions.items())) or "no events"))
        out.print(
            f"data dir: {mib(space.free_bytes)} free of {mib(space.total_bytes)}, "
            f"{space.free_inodes} of {space.total_inodes} inodes"
        )
        for reason in reasons:
            err.print(f"stuck: {reason}")
        for reason in short:
            err.print(f"short of space: {reason}")
        for reason in full:
            err.print(f"near quota: {reason}")
    if reasons or short or full:
        sys.exit(1)


@click.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--sender", required=True, help="The organ id the file will be sent from.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx: click.Context, file: Path, sender: str, as_json: bool) -> None:
    """Validate a dossier offline, as the gateway would: exit 0 valid, 1 invalid, every error listed."""
    gw = gateway_of(ctx, made=False)
    result = inspect_file(file, sender, gw.settings.limits, gw.clock())
    errors = [p.as_dict() | {"status": p.status} for p in result.problems]
    if as_json:
        click.echo(json.dumps({"valid": not errors, "errors": errors}, indent=2, ensure_ascii=False))
    elif errors:
        print_rows(errors, ["status", "code", "path", "message"], False, f"{shown(file.name)}: {len(errors)} error(s)")
    else:
        out.print(f"{shown(file.name)}: valid")
    ctx.exit(1 if errors else 0)


@click.command("settings")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def settings_command(ctx: click.Context, as_json: bool) -> None:
    """Every setting the gateway runs with here and where it comes from (default, config file, environment
    variable, --data-dir); the database URL without its password."""
    root = ctx.find_root().params
    rows = explain_settings(root["config_file"], root["data_dir"])
    print_rows(rows, ["setting", "value", "from"], as_json, "settings")


@click.command()
def demo() -> None:
    """Run the whole story in a temporary folder on a free local port (three organs, SFTP, gpg), then exit."""
    from gateway.demo import run_demo  # paramiko is only needed here

    run_demo(Console(soft_wrap=True))  # the demo's own words, with their styles


@click.command("fsck")
@click.option("--repair", is_flag=True, help="Repair what a safe, idempotent step can repair.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fsck_command(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Compare ledger and folders; exit 1 while differences remain that need an admin."""
    gw = gateway_of(ctx)
    if not repair and (pid := gw.folders.serving_pid()) is not None:
        err.print(f"note: serve (pid {pid}) runs on this data dir; its work in progress may be listed too")
    with progress("checking the folders, then the audit chain") as checked:
        findings = fsck(gw, repair=repair, progress=checked)
    rows = [f.as_dict() for f in findings]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
    elif rows:
        print_rows(rows, ["kind", "transfer_id", "path", "repaired", "detail"], False, "fsck")
    else:
        out.print("ledger and folders agree")
    ctx.exit(1 if any(not f.repaired for f in findings) else 0)


@click.command("purge")
@click.pass_context
def purge_command(ctx: click.Context) -> None:
    """Expire uncollected deliveries (701, 204), destroy old quarantine, purge old ledger and audit rows, remove
    old receipts and partial uploads nobody resumed."""
    gw = gateway_of(ctx)
    report = purge(gw.worker(), gw.settings)
    out.print(
        f"expired {report.expired}, warned {report.warned}, quarantined originals destroyed "
        f"{report.quarantined_destroyed}, transfers purged {report.transfers_purged}, "
        f"audit events purged {report.events_purged}, uncollected receipts removed {report.receipts_removed}, "
        f"partial uploads nobody resumed removed {report.partials_removed}"
    )


COMMANDS = (init, serve, status, check, settings_command, demo, fsck_command, purge_command)
