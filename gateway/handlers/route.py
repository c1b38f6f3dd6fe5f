"""Routing rules: the recipient must exist and be active, and the sender may send to it."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.errors import Problem


class OrganView(Protocol):
    """What the pipeline needs to know about an organ."""

    id: str
    active: bool
    pgp_fingerprint: str | None
    armor: bool


class Directory(Protocol):
    """Read-only view of organs and routes (the ledger's directory snapshot implements it)."""

    def find_organ(self, organ_id: str) -> Any: ...

    def route_allowed(self, sender_id: str, recipient_id: str) -> bool: ...


def route_problems(sender_id: str, recipient_id: object, directory: Directory) -> list[Problem]:
    """Problems with sending from the authenticated ``sender_id`` to the recipient the file names."""
    path = "/envelope/recipient_id"
    if not isinstance(recipient_id, str):
        return []  # the schema has reported it already
    organ = directory.find_organ(recipient_id)
    if organ is None:
        return [Problem("RECIPIENT_UNKNOWN", path, "the recipient is not an organ of this gateway")]
    if not organ.active:
        return [Problem("RECIPIENT_INACTIVE", path, "the recipient is disabled on this gateway")]
    if not directory.route_allowed(sender_id, recipient_id):
        return [Problem("ROUTE_FORBIDDEN", path, f"route {sender_id} → {recipient_id} is not permitted")]
    return []
