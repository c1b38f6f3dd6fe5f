"""The jail: map an organ's virtual SFTP paths to real paths inside its own folder, or refuse.

An organ sees ``/``, ``/outbox``, ``/inbox`` and ``/receipts`` and plain files directly inside them;
nothing deeper exists. Every mapped path is resolved with ``os.path.realpath`` and checked for
containment with ``os.path.commonpath`` (never a string prefix), and links are never followed.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from asyncssh import SFTPNoSuchFile, SFTPPermissionDenied

from gateway.folders import NAME_MAX, UPLOAD_PREFIX, text_name

AREAS = ("outbox", "inbox", "receipts")
PATH_MAX = 4096  # characters in a path a client sends: refused before any work on it


@dataclass(frozen=True)
class Place:
    """A mapped path: ``area`` is '' for the root, ``name`` is '' for an area itself."""

    virtual: str
    area: str
    name: str
    real: Path


class Jail:
    """Path mapping and containment for one organ's folder."""

    def __init__(self, organ_root: Path) -> None:
        self.root = Path(os.path.realpath(organ_root))
        self._areas = {area: os.path.realpath(self.root / area) for area in AREAS}

    def place(self, raw: bytes | str) -> Place:
        """Map a client's path; raise SFTPPermissionDenied / SFTPNoSuchFile for anything outside the jail."""
        text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
        if len(text) > PATH_MAX:
            raise SFTPPermissionDenied(f"paths are at most {PATH_MAX} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise SFTPPermissionDenied("control characters are not allowed in paths")
        if text_name(text) != text:  # the ledger, the audit trail and receipts hold names as text
            raise SFTPPermissionDenied("paths must be UTF-8")
        virtual = posixpath.normpath("/" + text.lstrip("/")) if text not in ("", ".") else "/"
        parts = [p for p in virtual.split("/") if p]
        if not parts:
            return Place("/", "", "", self.root)
        if parts[0] not in AREAS:
            raise SFTPNoSuchFile("only /outbox, /inbox and /receipts exist")
        if len(parts) > 2:
            raise SFTPNoSuchFile("there are no sub-folders")
        if len(parts) == 2 and len(os.fsencode(parts[1])) > NAME_MAX:  # the filesystem's limit, told as such
            raise SFTPPermissionDenied(f"names are at most {NAME_MAX} bytes")
        area_dir = self._areas[parts[0]]
        real = Path(area_dir, parts[1]) if len(parts) == 2 else Path(area_dir)
        if os.path.commonpath([os.path.realpath(real), area_dir]) != area_dir:
            raise SFTPPermissionDenied("outside your folders")
        if len(parts) == 2 and parts[1].startswith(UPLOAD_PREFIX):
            raise SFTPNoSuchFile("no such file")
        return Place("/" + "/".join(parts), parts[0], parts[1] if len(parts) == 2 else "", real)

    def file(self, raw: bytes | str, *, areas: tuple[str, ...] = AREAS) -> Place:
        """A path that must name a file in one of ``areas`` (it need not exist yet)."""
        place = self.place(raw)
        if not place.name:
            raise SFTPPermissionDenied("this is a folder")
        if place.area not in areas:
            raise SFTPPermissionDenied(f"not allowed in /{place.area}")
        return place

    @staticmethod
    def regular(place: Place) -> os.stat_result:
        """lstat of an existing plain file; links, folders and pipes are refused as if absent."""
        try:
            info = place.real.lstat()
        except FileNotFoundError:
            raise SFTPNoSuchFile("no such file") from None
        if stat.S_ISLNK(info.st_mode):
            raise SFTPPermissionDenied("links are not followed")
        if not stat.S_ISREG(info.st_mode):
            raise SFTPNoSuchFile("no such file")
        return info
