"""The directory half of the ledger: organs, their SSH keys and the permitted routes.

Workers look organs and routes up in one immutable snapshot, reloaded only when an admin change moved its
version: every change to organs or routes bumps ``DirectoryVersion`` in its own transaction, and each claim
reads the version in the claim's transaction, so a pass over a dossier sees the directory as it was when
the dossier was claimed, on every node that shares the ledger (reading organ and route per dossier cost
two read transactions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlmodel import Session, select

from gateway.errors import AdminError
from gateway.key_sources import split_line
from gateway.ledger import direct
from gateway.ledger import statements as sql
from gateway.ledger.models import ORGAN_KINDS, Organ, OrganData, Route, SshKey


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


def _directory_version(conn: Connection) -> int:
    """The current directory version (0 before the first change)."""
    return direct.scalar(conn, sql.DIRECTORY_VERSION) or 0


def _load_snapshot(conn: Connection, version: int) -> DirectorySnapshot:
    """Every organ and route, read in the transaction that read ``version``.

    Under PostgreSQL's READ COMMITTED a change committed after the version was read can show here early;
    its bump then differs from ``version``, so the next claim loads the snapshot again.
    """
    organs = {row["id"]: OrganData.model_validate(dict(row)) for row in conn.execute(sql.ALL_ORGANS).mappings()}
    routes = frozenset((sender, recipient) for sender, recipient in conn.execute(sql.ALL_ROUTES))
    return DirectorySnapshot(version, organs, routes)


class OrganDirectory:
    """Organs, SSH keys and routes (mixed into gateway.ledger.store.Ledger, which opens transactions)."""

    tx: Callable[[], AbstractContextManager[Session]]
    read: Callable[[], AbstractContextManager[Session]]
    core_read: Callable[[], AbstractContextManager[Connection]]
    _append: Callable[..., None]
    _directory = DirectorySnapshot(-1, {}, frozenset())  # this process's snapshot, loaded on first use

    def add_organ(self, organ_id: str, kind: str, name: str, now: datetime) -> Organ:
        if kind not in ORGAN_KINDS:
            raise AdminError("ORGAN_KIND", f"unknown kind {kind!r}; one of: {', '.join(ORGAN_KINDS)}")
        with self.tx() as s:
            if s.get(Organ, organ_id) is not None:
                raise AdminError("ORGAN_EXISTS", f"organ {organ_id!r} already exists")
            organ = Organ(id=organ_id, kind=kind, name=name, created_at=now)
            s.add(organ)
            _directory_changed(s)
            self._append(s, now, "organ_added", f"{organ_id} kind={kind}", organ_id=organ_id)
        return organ

    def organ(self, organ_id: str) -> OrganData:
        organ = self.find_organ(organ_id)
        if organ is None:
            raise _unknown_organ(organ_id)
        return organ

    def find_organ(self, organ_id: str) -> OrganData | None:
        return self.directory().find_organ(organ_id)

    def organs(self) -> list[Organ]:
        with self.read() as s:
            return list(s.exec(select(Organ).order_by(Organ.id)))

    def update_organ(self, organ_id: str, now: datetime, action: str, **values: Any) -> Organ:
        """Change organ fields (active, pgp_fingerprint, armor, upload_quota_bytes); the audit chain says why."""
        with self.tx() as s:
            organ = s.get(Organ, organ_id)
            if organ is None:
                raise _unknown_organ(organ_id)
            for key, value in values.items():
                setattr(organ, key, value)
            s.add(organ)
            _directory_changed(s)
            detail = " ".join(f"{k}={v}" for k, v in values.items())
            self._append(s, now, action, detail, organ_id=organ_id)
        return organ

    def add_ssh_key(self, organ_id: str, fingerprint: str, key_line: str, now: datetime) -> None:
        self.organ(organ_id)
        with self.tx() as s:
            if s.get(SshKey, (organ_id, fingerprint)) is not None:
                raise AdminError(
                    "SSH_KEY_EXISTS",
                    f"organ {organ_id!r} already has key {fingerprint} (to change where it may log in from, remove it "
                    "and add it again)",
                )
            s.add(SshKey(organ_id=organ_id, fingerprint=fingerprint, key_line=key_line, added_at=now))
            sources = split_line(key_line)[0]
            self._append(
                s, now, "ssh_key_added", fingerprint + (f" from {sources}" if sources else ""), organ_id=organ_id
            )

    def ssh_keys(self, organ_id: str | None = None) -> list[SshKey]:
        with self.read() as s:
            query = select(SshKey).order_by(SshKey.organ_id, SshKey.added_at)
            if organ_id is not None:
                query = query.where(SshKey.organ_id == organ_id)
            return list(s.exec(query))

    def remove_ssh_key(self, organ_id: str, fingerprint: str, now: datetime) -> None:
        with self.tx() as s:
            key = s.get(SshKey, (organ_id, fingerprint))
            if key is None:
                raise AdminError("SSH_KEY_UNKNOWN", f"organ {organ_id!r} has no key {fingerprint}")
            s.delete(key)
            self._append(s, now, "ssh_key_removed", fingerprint, organ_id=organ_id)

    def authorized_keys(self, organ_id: str) -> list[str] | None:
        """The key lines an active organ may log in with; None for an unknown or disabled organ."""
        with self.read() as s:
            organ = s.get(Organ, organ_id)
            if organ is None or not organ.active:
                return None
            return [k.key_line for k in s.exec(select(SshKey).where(SshKey.organ_id == organ_id))]

    def set_route(self, sender_id: str, recipient_id: str, allowed: bool, now: datetime) -> None:
        self.organ(sender_id)
        self.organ(recipient_id)
        if allowed and sender_id == recipient_id:
            raise AdminError("ROUTE_SELF", f"{sender_id} would send to itself: a route joins two organs")
        with self.tx() as s:
            existing = s.get(Route, (sender_id, recipient_id))
            if allowed and existing is None:
                s.add(Route(sender_id=sender_id, recipient_id=recipient_id, created_at=now))
            elif not allowed and existing is not None:
                s.delete(existing)
            _directory_changed(s)
            action = "route_allowed" if allowed else "route_denied"
            self._append(s, now, action, f"{sender_id} -> {recipient_id}", organ_id=sender_id)

    def routes(self) -> list[Route]:
        with self.read() as s:
            return list(s.exec(select(Route).order_by(Route.sender_id, Route.recipient_id)))

    def route_allowed(self, sender_id: str, recipient_id: str) -> bool:
        return self.directory().route_allowed(sender_id, recipient_id)

    def directory(self) -> DirectorySnapshot:
        """The organs and routes as they are now (the snapshot, reloaded if an admin change moved its version)."""
        with self.core_read() as conn:
            return self._current_directory(conn)

    def _current_directory(self, conn: Connection) -> DirectorySnapshot:
        version = _directory_version(conn)
        if version != self._directory.version:
            self._directory = _load_snapshot(conn, version)
        return self._directory


def _unknown_organ(organ_id: str) -> AdminError:
    return AdminError("ORGAN_UNKNOWN", f"no organ {organ_id!r} (see `flam-gateway organ list`)")


def _directory_changed(session: Session) -> None:
    """Bump the directory version in the transaction that changes organs or routes."""
    session.execute(sql.BUMP_DIRECTORY[session.get_bind().dialect.name])
