"""The gateway's own keys: the OpenPGP key that signs every delivery, and the SFTP host keys."""

from __future__ import annotations

import dataclasses

import click

from gateway import admin
from gateway.cli.output import gateway_of, out, print_rows
from gateway.sftp.hostkeys import KEY_TYPES, host_keys

# -- keys of the gateway -----------------------------------------------------------------------------------


@click.group("gateway-key")
def gateway_key() -> None:
    """The gateway's own OpenPGP key (it signs every delivery)."""


@gateway_key.command("export")
@click.pass_context
def gateway_key_export(ctx: click.Context) -> None:
    """Print the armored public keys recipients verify deliveries with (the signing key and any added one)."""
    click.echo(gateway_of(ctx).keyring.export_gateway_keys(), nl=False)


@gateway_key.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gateway_key_list(ctx: click.Context, as_json: bool) -> None:
    """List the gateway's key pairs and which one signs."""
    rows = [dataclasses.asdict(key) for key in gateway_of(ctx).keyring.gateway_keys()]
    print_rows(rows, ["fingerprint", "created", "signs"], as_json, "gateway keys")


@gateway_key.command("add")
@click.pass_context
def gateway_key_add(ctx: click.Context) -> None:
    """Generate a new key pair beside the signing one (rotation, step 1 of 3)."""
    fingerprint = admin.add_gateway_key(gateway_of(ctx))
    out.print(
        f"gateway OpenPGP key {fingerprint} added; it does not sign yet. Give the organs `gateway-key export` "
        f"(it holds both keys), then run `gateway-key use {fingerprint}`"
    )


@gateway_key.command("use")
@click.argument("fingerprint")
@click.pass_context
def gateway_key_use(ctx: click.Context, fingerprint: str) -> None:
    """Sign every delivery from now on with FINGERPRINT (step 2; a running serve takes it at once)."""
    now_signing, before = admin.use_gateway_key(gateway_of(ctx), fingerprint)
    out.print(f"{now_signing} signs deliveries from now on ({before} did); remove the old key once it is not needed")


@gateway_key.command("remove")
@click.argument("fingerprint")
@click.pass_context
def gateway_key_remove(ctx: click.Context, fingerprint: str) -> None:
    """Destroy a key pair that no longer signs (step 3; the signing key is refused)."""
    admin.remove_gateway_key(gateway_of(ctx), fingerprint)
    out.print(f"gateway key {fingerprint} removed")


@click.group("host-key")
def host_key() -> None:
    """The SFTP server's SSH host keys."""


@host_key.command("fingerprints")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def host_key_list(ctx: click.Context, as_json: bool) -> None:
    """Print the host key fingerprints admins give to organs: those the door presents, and those it announces."""
    rows = [
        {"algorithm": k.algorithm, "fingerprint": k.fingerprint, "state": "in use" if k.in_use else "announced"}
        for k in host_keys(gateway_of(ctx).folders.hostkeys)
    ]
    print_rows(rows, ["algorithm", "fingerprint", "state"], as_json, "SSH host keys")


@host_key.command("add")
@click.option("--type", "key_type", type=click.Choice(sorted(KEY_TYPES)), default="ed25519", show_default=True)
@click.pass_context
def host_key_add(ctx: click.Context, key_type: str) -> None:
    """Generate a new host key that the door announces to OpenSSH clients (rotation, step 1 of 3)."""
    key = admin.add_host_key(gateway_of(ctx), key_type)
    out.print(
        f"{key.algorithm} host key {key.fingerprint} added; the door announces it but does not present it yet. Give "
        f"the organs its fingerprint, then run `host-key use {key.fingerprint}`"
    )


@host_key.command("use")
@click.argument("fingerprint")
@click.pass_context
def host_key_use(ctx: click.Context, fingerprint: str) -> None:
    """Present FINGERPRINT from now on instead of the key of its algorithm (step 2; serve takes it within 5 s)."""
    key, before = admin.use_host_key(gateway_of(ctx), fingerprint)
    if key == before:
        out.print(f"the door presents {key.fingerprint} already")
        return
    out.print(
        f"the door presents {key.fingerprint} from now on ({before.fingerprint} before, still announced); remove "
        "the old key once every organ has the new one"
    )


@host_key.command("remove")
@click.argument("fingerprint")
@click.pass_context
def host_key_remove(ctx: click.Context, fingerprint: str) -> None:
    """Destroy a host key the door does not present (step 3; the keys in use are refused)."""
    key = admin.remove_host_key(gateway_of(ctx), fingerprint)
    out.print(f"host key {key.fingerprint} removed")


COMMANDS = (gateway_key, host_key)
