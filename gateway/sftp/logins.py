"""Which key may log in an organ from where, asked at each login and again while its sessions last.

A login is checked once, when it happens; an admin who disables an organ or removes a stolen key means its open
sessions too. So every few seconds the door asks again for each organ with a session open (one read of its keys
in a thread) and ends the sessions that would no longer be let in: a stolen key stops working when the admin
removes it, not when the thief's session goes idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

import asyncssh

from gateway.key_sources import allowed_from, split_line

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0


@dataclass(frozen=True)
class Login:
    """An open session: the organ, the public key it logged in with, and the client's address."""

    organ: str
    key: bytes  # asyncssh's SSHKey.public_data
    host: str
    peer: str


def organ_keys(lines: list[str] | None) -> list[tuple[str, bytes]]:
    """An organ's key lines (None: the organ is unknown or disabled) as (where from, public key data); a line that
    does not parse is left out."""
    keys = []
    for line in lines or []:
        sources, public_key = split_line(line)
        with contextlib.suppress(asyncssh.KeyImportError, ValueError):
            keys.append((sources, asyncssh.import_public_key(public_key).public_data))
    return keys


def key_allowed(keys: list[tuple[str, bytes]], key: bytes, host: str) -> tuple[bool, bool]:
    """Whether ``key`` from ``host`` may log in with the organ's ``keys`` (:func:`organ_keys`), and whether the key
    is the organ's but limited to other addresses."""
    elsewhere = False
    for sources, public_data in keys:
        if public_data == key:
            if allowed_from(sources, host):
                return True, False
            elsewhere = True
    return False, elsewhere


async def end_revoked(
    logins: MutableMapping[asyncssh.SSHServerConnection, Login],
    keys_of: Callable[[str], list[str] | None],
    audit: Callable[[str, str, str], None],
) -> None:
    """Every few seconds, close the sessions in ``logins`` that their organ's keys (``keys_of``, which may block)
    no longer let in, and ``audit(organ, detail, peer)`` each; a ledger that does not answer ends none."""
    while True:
        await asyncio.sleep(RECHECK_SECONDS)
        try:
            await _end_round(logins, keys_of, audit)
        except Exception:  # a fault here must not end the rounds (nor the door)
            log.exception("checking the open sessions failed")


async def _end_round(
    logins: MutableMapping[asyncssh.SSHServerConnection, Login],
    keys_of: Callable[[str], list[str] | None],
    audit: Callable[[str, str, str], None],
) -> None:
    loop = asyncio.get_running_loop()
    for organ in {login.organ for login in logins.values()}:
        try:
            lines = await loop.run_in_executor(None, keys_of, organ)
        except Exception as exc:  # the ledger: the sessions stay until it answers
            log.warning("cannot read %s's keys to check its open sessions (%s)", organ, exc)
            continue
        keys = organ_keys(lines)  # once for all of the organ's sessions
        for conn, login in list(logins.items()):  # as they are now: some may have ended during the read
            if login.organ == organ and not key_allowed(keys, login.key, login.host)[0]:
                why = "the organ was disabled" if lines is None else "its key was removed or limited elsewhere"
                audit(organ, f"session ended: {why}", login.peer)
                del logins[conn]  # ended once, whenever its close completes
                conn.close()
