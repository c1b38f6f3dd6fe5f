"""The organs and routes as one immutable snapshot, reloaded only when an admin change moved their version.

A worker looks up the recipient and the route of every dossier; reading them from the database cost two
read transactions per dossier. Every change to organs or routes bumps ``DirectoryVersion`` in its own
transaction, and each claim reads the version in the claim's transaction, so a pass over a dossier sees
the directory as it was when the dossier was claimed, on every node that shares the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection

from gateway.ledger import statements as sql
from gateway.ledger.models import OrganData


@dataclass(frozen=True)
class DirectorySnapshot:
    """Organs and permitted routes at one directory version (implements the pipeline's Directory)."""

    version: int
    organs: Mapping[str, OrganData]
    routes: frozenset[tuple[str, str]]

    def find_organ(self, organ_id: str) -> OrganData | None:
        return self.organs.get(organ_id)

    def route_allowed(self, sender_id: str, recipient_id: str) -> bool:
        return (sender_id, recipient_id) in self.routes


def directory_version(conn: Connection) -> int:
    """The current directory version (0 before the first change)."""
    return conn.execute(sql.DIRECTORY_VERSION).scalar() or 0


def load_snapshot(conn: Connection, version: int) -> DirectorySnapshot:
    """Every organ and route, read in the transaction that read ``version``.

    Under PostgreSQL's READ COMMITTED a change committed after the version was read can show here early;
    its bump then differs from ``version``, so the next claim loads the snapshot again.
    """
    organs = {row["id"]: OrganData.model_validate(dict(row)) for row in conn.execute(sql.ALL_ORGANS).mappings()}
    routes = frozenset((sender, recipient) for sender, recipient in conn.execute(sql.ALL_ROUTES))
    return DirectorySnapshot(version, organs, routes)
