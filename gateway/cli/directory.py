"""The directory the admin keeps: organs with their OpenPGP and SSH keys, and the routes between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gateway import admin
from gateway.cli.output import gateway_of, out, print_rows
from gateway.health import sized
from gateway.key_sources import split_line
from gateway.ledger.models import ORGAN_KINDS

# -- organs ------------------------------------------------------------------------------------------------


@click.group()
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
    gw = gateway_of(ctx)
    gw.folders.create()
    admin.add_organ(gw, organ_id, kind, name, armor)
    out.print(f"organ {organ_id} added; folders in {gw.folders.organs / organ_id}")


@organ.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def organ_list(ctx: click.Context, as_json: bool) -> None:
    """List organs."""
    gw = gateway_of(ctx)
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
            "waiting_bytes": waiting,
            "upload_quota_bytes": quota,
            "own_upload_quota": o.upload_quota_bytes is not None,
        }
        for o, waiting, quota in admin.uploads_waiting(gw)
    ]
    if not as_json:
        rows = [{**row, "waiting": sized(row["waiting_bytes"]), "quota": _quota_text(row)} for row in rows]
    columns = ["id", "kind", "name", "active", "pgp_fingerprint", "pgp_key", "ssh_keys", "waiting", "quota"]
    print_rows(rows, columns, as_json, "organs")


def _quota_text(row: dict[str, Any]) -> str:
    quota = sized(row["upload_quota_bytes"]) if row["upload_quota_bytes"] else "none"
    return f"{quota} (own)" if row["own_upload_quota"] else quota


@organ.command("quota")
@click.argument("organ_id")
@click.argument("size")
@click.pass_context
def organ_quota(ctx: click.Context, organ_id: str, size: str) -> None:
    """Give an organ its own upload quota: what it may have waiting at the gateway (in its outbox and not yet
    delivered or rejected). SIZE: 64GiB, 500MiB or bytes; 'none' (or 0) for no quota; 'default' for the
    gateway's setting upload_quota_bytes again."""
    gw = gateway_of(ctx)
    organ = admin.set_upload_quota(gw, organ_id, size)
    quota = organ.upload_quota(gw.settings.upload_quota_bytes)
    whose = "the gateway's setting upload_quota_bytes" if organ.upload_quota_bytes is None else "its own"
    out.print(
        f"organ {organ_id}: upload quota {sized(quota) if quota else 'none'} ({whose}); the SFTP door holds its "
        "uploads to it within a second"
    )


@organ.command("disable")
@click.argument("organ_id")
@click.pass_context
def organ_disable(ctx: click.Context, organ_id: str) -> None:
    """Disable an organ: no logins, nothing routed to it."""
    admin.set_active(gateway_of(ctx), organ_id, False)
    out.print(f"organ {organ_id} disabled; its open SFTP sessions end within seconds")


@organ.command("enable")
@click.argument("organ_id")
@click.pass_context
def organ_enable(ctx: click.Context, organ_id: str) -> None:
    """Enable a disabled organ."""
    admin.set_active(gateway_of(ctx), organ_id, True)
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
    fpr = admin.import_pgp_key(gateway_of(ctx), organ_id, file)
    out.print(f"organ {organ_id}: OpenPGP key {fpr}")


@pgp_key.command("remove")
@click.argument("organ_id")
@click.pass_context
def pgp_key_remove(ctx: click.Context, organ_id: str) -> None:
    """Withdraw the key (lost or compromised): dossiers to the organ are held (601) until a new key is imported."""
    fpr = admin.remove_pgp_key(gateway_of(ctx), organ_id)
    out.print(f"organ {organ_id}: OpenPGP key {fpr} removed")


@organ.group("ssh-key")
def ssh_key() -> None:
    """The organ's SSH public keys (several allowed) for SFTP login."""


@ssh_key.command("add")
@click.argument("organ_id")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--from",
    "sources",
    default="",
    metavar="ADDRESSES",
    help="Log in from these addresses or networks only (192.0.2.0/24,2001:db8::/32; '!' excludes one).",
)
@click.pass_context
def ssh_key_add(ctx: click.Context, organ_id: str, file: Path, sources: str) -> None:
    """Add an OpenSSH public key (to change its --from, remove it and add it again)."""
    fpr = admin.add_ssh_key(gateway_of(ctx), organ_id, file, sources)
    out.print(f"organ {organ_id}: SSH key {fpr}" + (f", from {sources} only" if sources else ""))


@ssh_key.command("list")
@click.argument("organ_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ssh_key_list(ctx: click.Context, organ_id: str | None, as_json: bool) -> None:
    """List SSH keys (of one organ or all)."""
    rows = []
    for k in gateway_of(ctx).ledger.ssh_keys(organ_id):
        sources, key = split_line(k.key_line)
        row = {"organ_id": k.organ_id, "fingerprint": k.fingerprint, "key": key[:40] + "…", "added_at": k.added_at}
        rows.append(row | {"from": sources or "any address"})
    print_rows(rows, ["organ_id", "fingerprint", "from", "added_at"], as_json, "SSH keys")


@ssh_key.command("remove")
@click.argument("organ_id")
@click.argument("fingerprint")
@click.pass_context
def ssh_key_remove(ctx: click.Context, organ_id: str, fingerprint: str) -> None:
    """Remove an SSH key by its SHA256 fingerprint (see `organ ssh-key list`)."""
    gw = gateway_of(ctx)
    gw.ledger.remove_ssh_key(organ_id, fingerprint, gw.clock())
    out.print(f"organ {organ_id}: SSH key {fingerprint} removed; the sessions it has open end within seconds")


# -- routes ------------------------------------------------------------------------------------------------


@click.group()
def route() -> None:
    """Permitted routes: who may send to whom (each direction is its own route)."""


@route.command("allow")
@click.argument("sender")
@click.argument("recipient")
@click.pass_context
def route_allow(ctx: click.Context, sender: str, recipient: str) -> None:
    """Allow SENDER to send to RECIPIENT."""
    gw = gateway_of(ctx)
    gw.ledger.set_route(sender, recipient, True, gw.clock())
    out.print(f"route {sender} → {recipient} allowed")


@route.command("deny")
@click.argument("sender")
@click.argument("recipient")
@click.pass_context
def route_deny(ctx: click.Context, sender: str, recipient: str) -> None:
    """Withdraw the route SENDER → RECIPIENT."""
    gw = gateway_of(ctx)
    gw.ledger.set_route(sender, recipient, False, gw.clock())
    out.print(f"route {sender} → {recipient} denied")


@route.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_list(ctx: click.Context, as_json: bool) -> None:
    """List permitted routes."""
    rows = [
        {"sender_id": r.sender_id, "recipient_id": r.recipient_id, "created_at": r.created_at}
        for r in gateway_of(ctx).ledger.routes()
    ]
    print_rows(rows, ["sender_id", "recipient_id", "created_at"], as_json, "routes")


COMMANDS = (organ, route)
