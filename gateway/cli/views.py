"""What the ledger shows the admin: transfers with their timelines, and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
from rich.text import Text

from gateway import admin
from gateway.cli.output import err, gateway_of, known_organ, out, print_rows, progress
from gateway.handlers.parse import shown
from gateway.lifecycle import State

_DAY_OR_MOMENT = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]
_Command = TypeVar("_Command", bound=Callable[..., Any])


def _window_options(since_help: str, until_help: str) -> Callable[[_Command], _Command]:
    """``--since`` and ``--until``: a day (``2026-11-01``) or a moment (``2026-11-30T08:00:00``), UTC."""

    def add(command: _Command) -> _Command:
        command = click.option("--until", type=click.DateTime(_DAY_OR_MOMENT), default=None, help=until_help)(command)
        return click.option("--since", type=click.DateTime(_DAY_OR_MOMENT), default=None, help=since_help)(command)

    return add


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """The days or moments given on the command line, read as UTC (the ledger's time); TIME_WINDOW if the window
    ends before it starts."""
    since, until = (moment.replace(tzinfo=UTC) if moment else None for moment in (since, until))
    admin.check_window(since, until)
    return since, until


# -- views -------------------------------------------------------------------------------------------------


@click.group()
def transfers() -> None:
    """The transfer ledger."""


@transfers.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--organ", "organ_id", default=None, help="Only transfers sent by or to this organ.")
@click.option("--status", default=None, type=click.Choice([s.value for s in State]), help="Only this state.")
@_window_options("Received from this day or moment (UTC).", "Received before this day or moment (UTC).")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1), help="The newest this many.")
@click.pass_context
def transfers_list(
    ctx: click.Context,
    as_json: bool,
    organ_id: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> None:
    """List transfers, newest last: the newest LIMIT of those the filters keep."""
    gw = known_organ(ctx, organ_id)
    since, until = _window(since, until)
    found = gw.ledger.transfers(
        organ_id=organ_id, state=status, received_since=since, received_until=until, limit=limit
    )
    rows = [admin.transfer_row(t) for t in found]
    cols = ["created_at", "message_id", "dossier_id", "sender_id", "recipient_id", "state", "status_code", "file"]
    print_rows(rows, cols, as_json, "transfers")


@transfers.command("show")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def transfers_show(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """The full timeline of one dossier (by message id or transfer id)."""
    found = admin.timeline(gateway_of(ctx), message_id)
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
        print_rows(t["events"], ["at", "action", "detail", "ok"], False, "timeline")


@transfers.command("stats")
@_window_options("From this day (UTC); default: 30 days ago.", "Up to this day (UTC, not included); default: now.")
@click.option("--organ", "organ_id", default=None, help="Only what this organ sent or received.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def transfers_stats(
    ctx: click.Context, since: datetime | None, until: datetime | None, organ_id: str | None, as_json: bool
) -> None:
    """What went where: per sender and recipient, the dossiers received, delivered, picked up, expired, rejected and
    still open, and each sender's rejections by status code (by the day each file was received)."""
    gw = known_organ(ctx, organ_id)
    since, until = _window(since, until)
    until = until or gw.clock()
    since = since or until - timedelta(days=30)
    stats = admin.exchange_stats(gw, since, until, organ_id)
    if as_json:
        click.echo(json.dumps(stats, ensure_ascii=False, indent=2))
        return
    window = f"received from {stats['since']} until {stats['until']}"
    print_rows(stats["routes"], ["sender_id", "recipient_id", *admin.STATS_COLUMNS], False, window)
    print_rows(stats["rejections"], ["sender_id", "status_code", "count"], False, "rejections by status code")


@click.group()
def audit() -> None:
    """The tamper-evident audit trail (logins, listings, uploads, downloads, removals, admin changes)."""


@audit.command("list")
@click.option("--organ", "organ_id", default=None)
@click.option(
    "--action", default=None, help="Only this action: login_failed, upload, route_allowed, transition:rejected, …"
)
@_window_options("From this day or moment (UTC).", "Before this day or moment (UTC).")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_list(
    ctx: click.Context,
    organ_id: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List audit events, newest last: the newest LIMIT of those the filters keep."""
    gw = known_organ(ctx, organ_id)
    since, until = _window(since, until)
    events = gw.ledger.events(organ_id=organ_id, action=action, since=since, until=until, limit=limit)
    rows = [admin.event_row(e) for e in events]
    print_rows(rows, ["at", "organ_id", "action", "detail", "ok", "peer"], as_json, "audit")
    if action is not None and not events and action not in (actions := gw.ledger.actions()):
        err.print(Text(f"note: no event in the audit trail has the action {action!r}; it has {', '.join(actions)}"))


@audit.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Recompute the hash chain of the audit trail; exit 1 if any event was altered."""
    with progress("checking the audit chain") as checked:
        count, bad = gateway_of(ctx).ledger.verify_chain(checked)
    if bad:
        err.print(Text.assemble((f"audit chain broken at event id(s) {bad[:20]}", "red"), f" ({count} events checked)"))
        ctx.exit(1)
    out.print(f"audit chain intact: {count} events")


COMMANDS = (transfers, audit)
