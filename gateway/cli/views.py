"""What the ledger shows the admin: transfers with their timelines, and the audit trail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click
from rich.text import Text

from gateway import admin
from gateway.cli.output import err, gateway_of, known_organ, out, print_rows
from gateway.handlers.parse import shown
from gateway.lifecycle import State

_DAY_OR_MOMENT = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]


def _utc(moment: datetime | None) -> datetime | None:
    """A day or moment given on the command line, read as UTC (the ledger's time)."""
    return moment.replace(tzinfo=UTC) if moment else None


# -- views -------------------------------------------------------------------------------------------------


@click.group()
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
    gw = known_organ(ctx, organ_id)
    rows = [admin.transfer_row(t) for t in gw.ledger.transfers(organ_id=organ_id, state=status, limit=limit)]
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
@click.option(
    "--since", type=click.DateTime(_DAY_OR_MOMENT), default=None, help="From this day (UTC); default: 30 days ago."
)
@click.option(
    "--until",
    type=click.DateTime(_DAY_OR_MOMENT),
    default=None,
    help="Up to this day (UTC, not included); default: now.",
)
@click.option("--organ", "organ_id", default=None, help="Only what this organ sent or received.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def transfers_stats(
    ctx: click.Context, since: datetime | None, until: datetime | None, organ_id: str | None, as_json: bool
) -> None:
    """What went where: per sender and recipient, the dossiers received, delivered, picked up, expired, rejected and
    still open, and each sender's rejections by status code (by the day each file was received)."""
    gw = known_organ(ctx, organ_id)
    until = _utc(until) or gw.clock()
    since = _utc(since) or until - timedelta(days=30)
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
@click.option("--since", type=click.DateTime(_DAY_OR_MOMENT), default=None, help="From this day or moment (UTC).")
@click.option("--until", type=click.DateTime(_DAY_OR_MOMENT), default=None, help="Before this day or moment (UTC).")
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
    events = gw.ledger.events(organ_id=organ_id, action=action, since=_utc(since), until=_utc(until), limit=limit)
    rows = [admin.event_row(e) for e in events]
    print_rows(rows, ["at", "organ_id", "action", "detail", "ok", "peer"], as_json, "audit")


@audit.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Recompute the hash chain of the audit trail; exit 1 if any event was altered."""
    count, bad = gateway_of(ctx).ledger.verify_chain()
    if bad:
        err.print(Text.assemble((f"audit chain broken at event id(s) {bad[:20]}", "red"), f" ({count} events checked)"))
        ctx.exit(1)
    out.print(f"audit chain intact: {count} events")


COMMANDS = (transfers, audit)
