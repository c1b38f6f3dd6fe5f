"""Place an encrypted dossier in the recipient's inbox under the name the spec gives (atomic, redo-safe)."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import GatewayFault
from gateway.folders import move_no_replace


def delivery_name(sender_id: str, message_id: str, form: str, armor: bool) -> str:
    """``<sender_id>_<message_id>.json.pgp`` (or ``.zip``; ``.asc`` for organs that asked for armour)."""
    return f"{sender_id}_{message_id}.{form}.{'asc' if armor else 'pgp'}"


def deliver(encrypted: Path, inbox_file: Path) -> None:
    """Rename the encryption into the inbox without ever replacing a file there.

    Redo after a crash: if the spool copy is gone the rename happened (the spool copy is only removed
    after the inbox name exists), even if the recipient has already picked the file up since.
    """
    if not encrypted.exists():
        return
    if not move_no_replace(encrypted, inbox_file):
        raise GatewayFault(f"the inbox already holds a different file named {inbox_file.name}")
