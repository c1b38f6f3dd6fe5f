"""`flam-gateway`: parses arguments, calls the admin operations and the service, prints tables or JSON."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import OperationalError

from gateway import admin
from gateway.clock import system_clock
from gateway.config import load_settings, without_password
from gateway.errors import GatewayError
from gateway.folders import power_cut_risk
from gateway.fsck import fsck
from gateway.handlers.inspect import inspect_file
from gateway.handlers.parse import shown
from gateway.health import ACTIONS_WINDOW, stuck
from gateway.ledger.models import ORGAN_KINDS
from gateway.ledger.store import ledger_unavailable
from gateway.lifecycle import State
from gateway.retention import purge
from gateway.service import Gateway, notify_systemd
from gateway.sftp.hostkeys import host_key_fingerprints

# no console markup: what is printed holds senders' file names and admins' input, and "[/x]" in a name would
# otherwise be eaten as a style or end the command with rich's MarkupError; values from the ledger also pass
# through `shown`, since control characters in a name would steer the admin's terminal
_log = logging.getLogger(__name__)
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def _gw(ctx: click.Context) -> Gateway:
    return ctx.find_object(Gateway)  # type: ignore[return-value]


def _known_organ(ctx: click.Context, organ_id: str | None) -> Gateway:
    """The gateway, once ``organ_id`` (a filter) is known: a misspelt organ is an error, not an empty list."""
    gw = _gw(ctx)
    if organ_id is not None:
        gw.ledger.organ(organ_id)
    return gw


def _print(rows: Sequence[dict[str, Any]], columns: Iterable[str], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(list(rows), ensure_ascii=False, indent=2, default=str))
        return
    table = Table(title=title)
    cols = list(columns)
    for col in cols:
        table.add_column(col, overflow="fold")  # never cut a value short: ids are copied from these tables
    for row in rows:
        table.add_row(*["" if row.get(c) is None else shown(str(row.get(c))) for c in cols])
    out.print(table)


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
    gateway = Gateway(settings, system_clock)
    ctx.obj = gateway
    ctx.call_on_close(gateway.close)


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the data dir, ledger, gateway OpenPGP key pair and SSH host keys (idempotent)."""
    gw = _gw(ctx)
    fpr = gw.init()
    out.print(
        f"data dir {gw.folders.root}\nledger   {without_password(gw.settings.ledger_url)}\ngateway OpenPGP key {fpr}"
    )
    if (risk := power_cut_risk(gw.folders.root)) is not None:
        err.print(f"warning: {risk}")


# -- organs ------------------------------------------------------------------------------------------------


@cli.group()
def organ() -> None:
    """Organs: the execution bodies that exchange dossiers."""


@organ.command("add")
@click.argument("organ_id")
@click.option("--kind", type=click.Choice(ORGAN_KINDS), required=True)
@click.option("--name", required=True)
@click.option("--armor", is_flag=True, help="Deliver ASCII-armoured .asc files instead of binary .pgp.")
@click.pass_context
def organ_add(ctx: click.Context, organ_id: str, kind: str, name: str, armor: bool) -> None:
    """Register an organ and create its outbox/, inbox/ and receipts/."""
    gw = _gw(ctx)
    gw.folders.create()
    admin.add_organ(gw, organ_id, kind, name, armor)
    out.print(f"organ {organ_id} added; folders in {gw.folders.organs / organ_id}")


@organ.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def organ_list(ctx: click.Context, as_json: bool) -> None:
    """List organs."""
    gw = _gw(ctx)
    keys: dict[str, int] = {}
    for key in gw.ledger.ssh_keys():
        keys[key.organ_id] = keys.get(key.organ_id, 0) + 1
    rows = [
        {
            "id": o.id,
            "kind": o.kind,
            "name": o.name,
            "active": o.active,
            "pgp_fingerprint": o.pgp_fingerprint,
            "pgp_key": admin.pgp_key_state(gw, o.pgp_fingerprint),
            "armor": o.armor,
            "ssh_keys": keys.get(o.id, 0),
        }
        for o in gw.ledger.organs()
    ]
    _print(rows, ["id", "kind", "name", "active", "pgp_fingerprint", "pgp_key", "ssh_keys"], as_json, "organs")


@organ.command("disable")
@click.argument("organ_id")
@click.pass_context
def organ_disable(ctx: click.Context, organ_id: str) -> None:
    """Disable an organ: no logins, nothing routed to it."""
    admin.set_active(_gw(ctx), organ_id, False)
    out.print(f"organ {organ_id} disabled")


@organ.command("enable")
@click.argument("organ_id")
@click.pass_context
def organ_enable(ctx: click.Context, organ_id: str) -> None:
    """Enable a disabled organ."""
    admin.set_active(_gw(ctx), organ_id, True)
    out.print(f"organ {organ_id} enabled")


@organ.group("pgp-key")
def pgp_key() -> None:
    """The organ's OpenPGP public key (deliveries are encrypted to it)."""


@pgp_key.command("import")
@click.argument("organ_id")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.pass_context
def pgp_key_import(ctx: click.Context, organ_id: str, file: Path) -> None:
    """Import an armored public key; keys that cannot encrypt, are expired or revoked are refused."""
    fpr = admin.import_pgp_key(_gw(ctx), organ_id, file)
    out.print(f"organ {organ_id}: OpenPGP key {fpr}")


@pgp_key.command("remove")
@click.argument("organ_id")
@click.pass_context
def pgp_key_remove(ctx: click.Context, organ_id: str) -> None:
    """Withdraw the key (lost or compromised): dossiers to the organ are held (601) until a new key is imported."""
    fpr = admin.remove_pgp_key(_gw(ctx), organ_id)
    out.print(f"organ {organ_id}: OpenPGP key {fpr} removed")


@organ.group("ssh-key")
def ssh_key() -> None:
    """The organ's SSH public keys (several allowed) for SFTP login."""


@ssh_key.command("add")
@click.argument("organ_id")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.pass_context
def ssh_key_add(ctx: click.Context, organ_id: str, file: Path) -> None:
    """Add an OpenSSH public key."""
    fpr = admin.add_ssh_key(_gw(ctx), organ_id, file)
    out.print(f"organ {organ_id}: SSH key {fpr}")


@ssh_key.command("list")
@click.argument("organ_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ssh_key_list(ctx: click.Context, organ_id: str | None, as_json: bool) -> None:
    """List SSH keys (of one organ or all)."""
    rows = [
        {"organ_id": k.organ_id, "fingerprint": k.fingerprint, "key": k.key_line[:40] + "…", "added_at": k.added_at}
        for k in _gw(ctx).ledger.ssh_keys(organ_id)
    ]
    _print(rows, ["organ_id", "fingerprint", "added_at"], as_json, "SSH keys")


@ssh_key.command("remove")
@click.argument("organ_id")
@click.argument("fingerprint")
@click.pass_context
def ssh_key_remove(ctx: click.Context, organ_id: str, fingerprint: str) -> None:
    """Remove an SSH key by its SHA256 fingerprint (see `organ ssh-key list`)."""
    gw = _gw(ctx)
    gw.ledger.remove_ssh_key(organ_id, fingerprint, gw.clock())
    out.print(f"organ {organ_id}: SSH key {fingerprint} removed")


# -- routes ------------------------------------------------------------------------------------------------


@cli.group()
def route() -> None:
    """Permitted routes: who may send to whom (each direction is its own route)."""


@route.command("allow")
@click.argument("sender")
@click.argument("recipient")
@click.pass_context
def route_allow(ctx: click.Context, sender: str, recipient: str) -> None:
    """Allow SENDER to send to RECIPIENT."""
    gw = _gw(ctx)
    gw.ledger.set_route(sender, recipient, True, gw.clock())
    out.print(f"route {sender} → {recipient} allowed")


@route.command("deny")
@click.argument("sender")
@click.argument("recipient")
@click.pass_context
def route_deny(ctx: click.Context, sender: str, recipient: str) -> None:
    """Withdraw the route SENDER → RECIPIENT."""
    gw = _gw(ctx)
    gw.ledger.set_route(sender, recipient, False, gw.clock())
    out.print(f"route {sender} → {recipient} denied")


@route.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_list(ctx: click.Context, as_json: bool) -> None:
    """List permitted routes."""
    rows = [
        {"sender_id": r.sender_id, "recipient_id": r.recipient_id, "created_at": r.created_at}
        for r in _gw(ctx).ledger.routes()
    ]
    _print(rows, ["sender_id", "recipient_id", "created_at"], as_json, "routes")


# -- keys of the gateway -----------------------------------------------------------------------------------


@cli.group("gateway-key")
def gateway_key() -> None:
    """The gateway's own OpenPGP key (it signs every delivery)."""


@gateway_key.command("export")
@click.pass_context
def gateway_key_export(ctx: click.Context) -> None:
    """Print the armored public keys recipients verify deliveries with (the signing key and any added one)."""
    click.echo(_gw(ctx).keyring.export_gateway_keys(), nl=False)


@gateway_key.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gateway_key_list(ctx: click.Context, as_json: bool) -> None:
    """List the gateway's key pairs and which one signs."""
    rows = [dataclasses.asdict(key) for key in _gw(ctx).keyring.gateway_keys()]
    _print(rows, ["fingerprint", "created", "signs"], as_json, "gateway keys")


@gateway_key.command("add")
@click.pass_context
def gateway_key_add(ctx: click.Context) -> None:
    """Generate a new key pair beside the signing one (rotation, step 1 of 3)."""
    fingerprint = admin.add_gateway_key(_gw(ctx))
    out.print(
        f"gateway OpenPGP key {fingerprint} added; it does not sign yet. Give the organs `gateway-key export` "
        f"(it holds both keys), then run `gateway-key use {fingerprint}`"
    )


@gateway_key.command("use")
@click.argument("fingerprint")
@click.pass_context
def gateway_key_use(ctx: click.Context, fingerprint: str) -> None:
    """Sign every delivery from now on with FINGERPRINT (step 2; a running serve takes it at once)."""
    now_signing, before = admin.use_gateway_key(_gw(ctx), fingerprint)
    out.print(f"{now_signing} signs deliveries from now on ({before} did); remove the old key once it is not needed")


@gateway_key.command("remove")
@click.argument("fingerprint")
@click.pass_context
def gateway_key_remove(ctx: click.Context, fingerprint: str) -> None:
    """Destroy a key pair that no longer signs (step 3; the signing key is refused)."""
    admin.remove_gateway_key(_gw(ctx), fingerprint)
    out.print(f"gateway key {fingerprint} removed")


@cli.group("host-key")
def host_key() -> None:
    """The SFTP server's SSH host keys."""


@host_key.command("fingerprints")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def host_key_list(ctx: click.Context, as_json: bool) -> None:
    """Print the host key fingerprints admins give to organs."""
    rows = [{"algorithm": a, "fingerprint": f} for a, f in host_key_fingerprints(_gw(ctx).folders.hostkeys)]
    _print(rows, ["algorithm", "fingerprint"], as_json, "SSH host keys")


# -- running -----------------------------------------------------------------------------------------------


@cli.command()
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
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gw = _gw(ctx)
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
            where += f", metrics on http://{gw.settings.metrics_listen.rpartition(':')[0]}:{gw.metrics.server_port}"
        engine = f"OpenPGP by {gw.settings.openpgp}, key {gw.keyring.gateway_fingerprint}"
        if not gw.settings.workers:
            engine += "; deliveries paused (workers = 0): dossiers are received and wait"
        click.echo(f"flam-gateway ready: {where}, data dir {gw.folders.root}, {engine}", err=True)
        notify_systemd("READY=1")

    gw.serve(stop, ready)
    notify_systemd("STOPPING=1")


@cli.command()
@click.option("--stuck-after", default=1800, show_default=True, type=click.IntRange(min=1), help="Seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, stuck_after: int, as_json: bool) -> None:
    """The backlog now, for admins and monitoring: open transfers by state and how long the oldest has not moved,
    retries, receipts not yet written, the last hour's audit actions. Exit 1 when work or a receipt has waited
    longer than --stuck-after."""
    gw = _gw(ctx)
    now = gw.clock()
    gauges = gw.ledger.gauges(now - ACTIONS_WINDOW)
    reasons = stuck(gauges, now, timedelta(seconds=stuck_after))
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
            "stuck": reasons,
        }
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print(states, ["state", "count", "oldest_unmoved_since"], False, "open transfers")
        out.print(f"retrying {gauges.retrying}; receipts not yet written {unwritten}")
        out.print("last hour: " + (", ".join(f"{a} {n}" for a, n in sorted(gauges.actions.items())) or "no events"))
        for reason in reasons:
            err.print(f"stuck: {reason}")
    if reasons:
        sys.exit(1)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--sender", required=True, help="The organ id the file will be sent from.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx: click.Context, file: Path, sender: str, as_json: bool) -> None:
    """Validate a dossier offline, as the gateway would: exit 0 valid, 1 invalid, every error listed."""
    gw = _gw(ctx)
    result = inspect_file(file, sender, gw.settings.limits, gw.clock())
    errors = [p.as_dict() | {"status": p.status} for p in result.problems]
    if as_json:
        click.echo(json.dumps({"valid": not errors, "errors": errors}, indent=2, ensure_ascii=False))
    elif errors:
        _print(errors, ["status", "code", "path", "message"], False, f"{shown(file.name)}: {len(errors)} error(s)")
    else:
        out.print(f"{shown(file.name)}: valid")
    ctx.exit(1 if errors else 0)


# -- views -------------------------------------------------------------------------------------------------


@cli.group()
def transfers() -> None:
    """The transfer ledger."""


@transfers.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--organ", "organ_id", default=None, help="Only transfers sent by or to this organ.")
@click.option("--status", default=None, type=click.Choice([s.value for s in State]), help="Only this state.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1), help="The newest this many.")
@click.pass_context
def transfers_list(ctx: click.Context, as_json: bool, organ_id: str | None, status: str | None, limit: int) -> None:
    """List transfers, newest last."""
    gw = _known_organ(ctx, organ_id)
    rows = [admin.transfer_row(t) for t in gw.ledger.transfers(organ_id=organ_id, state=status, limit=limit)]
    cols = ["created_at", "message_id", "dossier_id", "sender_id", "recipient_id", "state", "status_code", "file"]
    _print(rows, cols, as_json, "transfers")


@transfers.command("show")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def transfers_show(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """The full timeline of one dossier (by message id or transfer id)."""
    found = admin.timeline(_gw(ctx), message_id)
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False, indent=2, default=str))
        return
    for t in found:
        out.print(
            Text.assemble(
                (shown(t["file"]), "bold"),
                f" {t['sender_id']} → {t['recipient_id']}  state={t['state']} status={t['status_code']}  "
                f"transfer {t['id']}",
            )
        )
        _print(t["events"], ["at", "action", "detail", "ok"], False, "timeline")


@cli.group()
def audit() -> None:
    """The tamper-evident audit trail (logins, listings, uploads, downloads, removals, admin changes)."""


@audit.command("list")
@click.option("--organ", "organ_id", default=None)
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_list(ctx: click.Context, organ_id: str | None, limit: int, as_json: bool) -> None:
    """List audit events, newest last."""
    gw = _known_organ(ctx, organ_id)
    rows = [admin.event_row(e) for e in gw.ledger.events(organ_id=organ_id, limit=limit)]
    _print(rows, ["at", "organ_id", "action", "detail", "ok", "peer"], as_json, "audit")


@audit.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Recompute the hash chain of the audit trail; exit 1 if any event was altered."""
    count, bad = _gw(ctx).ledger.verify_chain()
    if bad:
        err.print(Text.assemble((f"audit chain broken at event id(s) {bad[:20]}", "red"), f" ({count} events checked)"))
        ctx.exit(1)
    out.print(f"audit chain intact: {count} events")


@cli.command()
def demo() -> None:
    """Run the whole story in a temporary folder on a free local port (three organs, SFTP, gpg), then exit."""
    from gateway.demo import run_demo  # paramiko is only needed here

    run_demo(Console(soft_wrap=True))  # the demo's own words, with their styles


@cli.command("fsck")
@click.option("--repair", is_flag=True, help="Repair what a safe, idempotent step can repair.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fsck_command(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Compare ledger and folders; exit 1 while differences remain that need an admin."""
    gw = _gw(ctx)
    if not repair and (pid := gw.folders.serving_pid()) is not None:
        err.print(f"note: serve (pid {pid}) runs on this data dir; its work in progress may be listed too")
    findings = fsck(gw, repair=repair)
    rows = [f.as_dict() for f in findings]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
    elif rows:
        _print(rows, ["kind", "transfer_id", "path", "repaired", "detail"], False, "fsck")
    else:
        out.print("ledger and folders agree")
    ctx.exit(1 if any(not f.repaired for f in findings) else 0)


@cli.command("purge")
@click.pass_context
def purge_command(ctx: click.Context) -> None:
    """Expire uncollected deliveries (701, 204), destroy old quarantine, purge old ledger and audit rows."""
    gw = _gw(ctx)
    report = purge(gw.worker(), gw.settings)
    out.print(
        f"expired {report.expired}, warned {report.warned}, quarantined originals destroyed "
        f"{report.quarantined_destroyed}, transfers purged {report.transfers_purged}, "
        f"audit events purged {report.events_purged}, uncollected receipts removed {report.receipts_removed}"
    )


def _error(exc: GatewayError) -> NoReturn:
    err.print(Text.assemble((f"error {exc.code}", "red"), f": {exc.message}"))
    sys.exit(2)


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
        _error(ledger_unavailable(exc))
    except GatewayError as exc:
        _error(exc)
    sys.exit(code if isinstance(code, int) else 0)
