"""The SFTP door: the listener, public-key logins against the ledger, the caps on sessions and on connections not
yet logged in, and the rounds that close idle sessions and those no longer let in (gateway.sftp.logins); each
session's file operations are gateway.sftp.files.

The door only moves bytes and tells the rest of the gateway through :class:`DoorHooks`; it never validates or
encrypts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncssh
from asyncssh.kex import get_kex_algs
from asyncssh.mac import get_mac_algs
from asyncssh.public_key import get_public_key_algs
from asyncssh.sftp import MIN_SFTP_VERSION
from asyncssh.stream import SSHServerStreamSession

from gateway.sftp.files import SftpSession
from gateway.sftp.handles import Handle
from gateway.sftp.hostkeys import host_key_files
from gateway.sftp.logins import Login, end_revoked, key_allowed, organ_keys
from gateway.sftp.quota import Quota
from gateway.sftp.spares import SparePool
from gateway.sftp.startups import Startups

log = logging.getLogger(__name__)

# No chacha20-poly1305: OpenSSH clients then choose AES-CTR with an EtM MAC, which asyncssh runs about twice
# as fast (measured: 210 vs 109 MB/s). GCM stays for clients that prefer it; CBC and arcfour are gone.
CIPHERS = ("aes128-ctr", "aes256-ctr", "aes192-ctr", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
    "umac-64-etm@openssh.com",
)
# Key exchanges and signatures (host keys, logins): OpenSSH 9's sshd defaults as far as asyncssh has them, with
# ML-KEM (post-quantum) first and the ed448 keys `organ ssh-key add` takes. asyncssh's own defaults add SHA-1, which
# OpenSSH's sshd dropped in 8.8 (2021) and security scanners (ssh-audit) fail: diffie-hellman-group14-sha1, ssh-rsa
# signatures, hmac-sha1. The door offers those only with the setting ssh_allow_sha1, for clients too old for
# anything else (JSch before 0.1.54, old WinSCP and PuTTY: an RSA key signed with SHA-1).
KEX_ALGS = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "curve448-sha512",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
SIGNATURE_ALGS = (
    "ssh-ed25519",
    "ssh-ed448",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
SHA1_ALGS = {
    "kex_algs": ("diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1"),
    "signature_algs": ("ssh-rsa",),
    "mac_algs": ("hmac-sha1",),
}
_SHA1_HINT = "; a client that knows only SHA-1 (ssh-rsa, diffie-hellman-group14-sha1) needs ssh_allow_sha1"
# The transport settings of every door connection (the benchmark's plain asyncssh server uses them too).
TRANSPORT: dict[str, Any] = {
    "encryption_algs": CIPHERS,
    "mac_algs": MACS,
    "window": 8 * 1024 * 1024,
    "max_pktsize": 256 * 1024,
}


def algorithms(allow_sha1: bool) -> dict[str, tuple[str, ...]]:
    """The key exchanges, signatures and MACs the door offers: SHA-1's last, and only if ``allow_sha1``; each only
    if this asyncssh has it (ML-KEM needs an OpenSSL with it, or liboqs)."""
    offered = {"kex_algs": KEX_ALGS, "signature_algs": SIGNATURE_ALGS, "mac_algs": MACS}
    known = {"kex_algs": get_kex_algs(), "signature_algs": get_public_key_algs(), "mac_algs": get_mac_algs()}
    return {
        name: tuple(alg for alg in algs + (SHA1_ALGS[name] if allow_sha1 else ()) if alg.encode() in known[name])
        for name, algs in offered.items()
    }


@dataclass(frozen=True)
class DoorLimits:
    login_timeout: float = 30.0
    idle_timeout: float = 600.0
    max_sessions_per_organ: int = 20
    max_sessions_total: int = 500
    max_startups_per_address: int = 200  # connections not yet logged in (gateway.sftp.startups)
    max_startups: int = 1000
    max_auth_tries: int = 6  # keys a connection may offer that are refused
    max_open_per_organ: int = 256  # files and listings open at once, in all of an organ's sessions
    max_channels_per_connection: int = 10  # SFTP sessions on one connection (OpenSSH's MaxSessions)
    upload_quota_bytes: int = 16 << 30  # an organ's quota until the door has read its own (gateway.sftp.quota)
    allow_sha1: bool = False  # offer SHA-1 (algorithms) to clients that know nothing newer


class DoorHooks(Protocol):
    """What the door asks of the gateway. ``authorized_keys`` and ``quota_reading`` (what an organ has in its
    outbox and the spool, and its upload quota: 0 for none) may block (the door runs them in a thread); ``audit``
    is called on the event loop and must return at once. Completed uploads need no hook: they are renamed into
    place, and the watcher sees the rename."""

    def authorized_keys(self, organ_id: str) -> list[str] | None: ...

    def audit(self, organ_id: str | None, action: str, detail: str, ok: bool, peer: str) -> None: ...

    def quota_reading(self, organ_id: str) -> tuple[int, int]: ...


@dataclass
class DoorState:
    organs_root: Path
    hooks: DoorHooks
    limits: DoorLimits
    spares: SparePool
    quota: Quota
    flusher: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, "upload-flush"))
    sessions: dict[str, int] = field(default_factory=dict)
    connections: dict[asyncssh.SSHServerConnection, float] = field(default_factory=dict)  # logged in: last activity
    logins: dict[asyncssh.SSHServerConnection, Login] = field(default_factory=dict)
    partials: dict[Path, tuple[SftpSession, Handle]] = field(default_factory=dict)  # the newest upload to each name
    open_files: dict[str, int] = field(default_factory=dict)  # per organ: its files and listings open
    channels: dict[asyncssh.SSHServerConnection, int] = field(default_factory=dict)  # SFTP sessions per connection
    signatures: frozenset[bytes] = frozenset()  # the signature algorithms a login may use
    startups: Startups = field(init=False)

    def __post_init__(self) -> None:
        self.startups = Startups(self.limits.max_startups_per_address, self.limits.max_startups)


class _Auth(asyncssh.SSHServer):
    """One connection: public-key login against the ledger, session caps, audit."""

    def __init__(self, door: DoorState) -> None:
        self.door = door
        self.conn: asyncssh.SSHServerConnection | None = None
        self.organ: str | None = None
        self.peer = self.host = "?"
        self.waiting = False  # counted among the connections not yet logged in
        self.failures = 0  # keys refused on this connection
        self.key = b""  # the key that logged in
        self.user: str | None = None  # the user name the client asked to log in as
        self.refused_channels = 0  # session channels refused on this connection

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.host = str(peer[0])
        self.peer = f"{peer[0]}:{peer[1]}"  # asyncssh sets TCP_NODELAY itself: no 40 ms stalls on small files
        if not self.door.startups.admit(self.host):
            conn.abort()  # asyncssh sends its version after this returns, and sends nothing once aborted
            return
        self.waiting = True

    def _logged_in_or_gone(self) -> None:
        if self.waiting:
            self.door.startups.done(self.host)
            self.waiting = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self._never_logged_in(exc)
        self._logged_in_or_gone()
        if self.conn is not None:
            self.door.connections.pop(self.conn, None)
            self.door.logins.pop(self.conn, None)
            self.door.channels.pop(self.conn, None)
        if self.organ is not None:
            self.door.sessions[self.organ] = self.door.sessions.get(self.organ, 1) - 1
        if self.refused_channels > 1:
            self._audit_refused_channels()

    def session_requested(self) -> _Channel | bool:
        """A session channel (for SFTP; a shell, a command or scp are refused in it): at most
        ``max_channels_per_connection`` open at once, as OpenSSH's MaxSessions (the channel beyond is refused)."""
        assert self.conn is not None
        if self.door.channels.get(self.conn, 0) >= self.door.limits.max_channels_per_connection:
            self.refused_channels += 1
            if self.refused_channels == 1:  # the rest counted at the end: no flood of the trail
                self._audit_refused_channels()
            return False
        return _Channel(self.door, self.conn)

    def _audit_refused_channels(self) -> None:
        limit = self.door.limits.max_channels_per_connection
        more = f" ({self.refused_channels} in all)" if self.refused_channels > 1 else ""
        self.door.hooks.audit(
            self.organ, "refused", f"SFTP sessions beyond {limit} on one connection{more}", False, self.peer
        )

    def _never_logged_in(self, exc: Exception | None) -> None:
        """Record why a connection ended before its login, where the client cannot have been told: it shares no
        algorithm with the door, or it offered no key the door takes (an old client may know only SHA-1)."""
        assert self.conn is not None
        if isinstance(exc, asyncssh.KeyExchangeFailed):
            reason = exc.reason if len(exc.reason) <= 200 else f"{exc.reason[:200]}…"  # the client's words, in part
            detail = f"the key exchange failed: {reason}"
        elif self.user is None:
            # a client that offered its algorithms (asyncssh keeps its KEXINIT) and left before the keys were agreed;
            # not a probe that only reads the banner or sends its own (Nagios' check_ssh, every few minutes)
            if not getattr(self.conn, "_client_kexinit", b"") or self.conn.get_extra_info("recv_cipher"):
                return
            detail = "the client left in the key exchange (no algorithm in common, which it tells its user; or gave up)"
        elif not self.failures:
            detail = f"user {self.user[:64]!r} offered no key the door takes (none, or one it signs with SHA-1 only)"
        else:
            return
        if self.door.startups.login_failed(self.host):
            hint = "" if self.door.limits.allow_sha1 else _SHA1_HINT  # where SHA-1 is offered, it is not the cause
            self.door.hooks.audit(None, "login_failed", f"{detail}{hint}", False, self.peer)

    def begin_auth(self, username: str) -> bool:
        self.user = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        lines = await asyncio.get_running_loop().run_in_executor(None, self.door.hooks.authorized_keys, username)
        allowed, elsewhere = key_allowed(organ_keys(lines), key.public_data, self.host)
        if allowed:
            self.key = key.public_data
            # asyncssh checks a login's signature against every algorithm it knows, whatever it offered (ssh-rsa's
            # SHA-1 among them): a client that ignores the offer must be held to it here
            key.all_sig_algorithms = key.all_sig_algorithms & self.door.signatures
            return True
        if self.door.startups.login_failed(self.host):
            self.door.hooks.audit(
                username if lines is not None else None,
                "login_failed",
                f"user {username[:64]!r} key {key.get_fingerprint()}"
                + (f": not from {self.host}, the key is limited to other addresses" if elsewhere else ""),
                False,
                self.peer,
            )
        self.failures += 1
        if self.failures >= self.door.limits.max_auth_tries and self.conn is not None:
            # OpenSSH's MaxAuthTries: asyncssh lets a client try keys (and names) for as long as login_timeout
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication failures")
        return False

    def auth_completed(self) -> None:
        assert self.conn is not None
        self._logged_in_or_gone()
        organ = self.conn.get_extra_info("username")
        total = sum(self.door.sessions.values())
        if self.door.sessions.get(organ, 0) >= self.door.limits.max_sessions_per_organ or (
            total >= self.door.limits.max_sessions_total
        ):
            self.door.hooks.audit(organ, "login_refused", "too many sessions", False, self.peer)
            self.conn.close()
            return
        self.organ = organ
        self.door.sessions[organ] = self.door.sessions.get(organ, 0) + 1
        self.door.connections[self.conn] = time.monotonic()
        self.door.logins[self.conn] = Login(organ, self.key, self.host, self.peer)
        self.door.hooks.audit(organ, "login", "publickey", True, self.peer)
        self.door.quota.refresh(organ)  # read before the first upload needs it


class Door:
    """A listening SFTP door; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, server: asyncssh.SSHAcceptor, door: DoorState, follower: HostKeysFollower) -> None:
        self._server, self._door = server, door
        self.port: int = server.sockets[0].getsockname()[1]
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())
        self._revoker = asyncio.get_running_loop().create_task(
            end_revoked(door.logins, door.hooks.authorized_keys, self._ended)
        )
        self._follower = asyncio.get_running_loop().create_task(follower.follow(server))

    def _ended(self, organ: str, detail: str, peer: str) -> None:
        self._door.hooks.audit(organ, "session_ended", detail, False, peer)

    async def _reap_idle(self) -> None:
        """Close idle sessions, and put the connections refused meanwhile, and the failed logins not recorded one
        by one, in the audit trail (an event per address and round: a flood must not flood the trail)."""
        while True:
            await asyncio.sleep(min(30.0, self._door.limits.idle_timeout / 4))
            now = time.monotonic()
            for conn, last in list(self._door.connections.items()):
                if now - last > self._door.limits.idle_timeout:
                    conn.close()
            for action, address, detail in self._door.startups.end_round():
                self._door.hooks.audit(None, action, detail, False, address)

    async def close(self) -> None:
        self._reaper.cancel()
        self._revoker.cancel()
        self._follower.cancel()
        self._server.close()
        for conn in list(self._door.connections):
            conn.close()
        for session, handle in list(self._door.partials.values()):
            session.abandon(handle)  # kept for their clients to resume: asyncssh's clean-up may not run before we end
        await self._server.wait_closed()
        self._door.flusher.shutdown()
        self._door.spares.close()


async def start_door(
    host: str,
    port: int,
    *,
    organs_root: Path,
    spares: Path,
    host_keys: Path,
    hooks: DoorHooks,
    limits: DoorLimits = DoorLimits(),
) -> Door:
    """Listen for SFTP on ``host:port`` (port 0: any free port); ``spares`` is a folder of the door's own on
    the outboxes' filesystem, where it makes upload files ahead of need; ``host_keys`` the folder of the host keys,
    which the door follows (gateway.sftp.hostkeys)."""
    offered = algorithms(limits.allow_sha1)
    follower = HostKeysFollower(host_keys, offered["signature_algs"])
    door = DoorState(
        Path(organs_root),
        hooks,
        limits,
        SparePool(spares),
        Quota(limits.upload_quota_bytes, hooks.quota_reading),
        signatures=frozenset(alg.encode() for alg in offered["signature_algs"]),
    )
    server = await asyncssh.create_server(
        lambda: _Auth(door),
        host,
        port,
        server_host_keys=follower.load(),  # parsed once, not per login
        send_server_host_keys=True,  # OpenSSH's UpdateHostKeys learns the announced keys (hostkeys-00@openssh.com)
        allow_pty=False,
        line_editor=False,  # for shells, which the door has none of; _Channel gets asyncssh's channel, not a wrapper
        agent_forwarding=False,
        x11_forwarding=False,
        login_timeout=limits.login_timeout,
        keepalive_interval=60,
        keepalive_count_max=3,
        **(TRANSPORT | offered),
    )
    door.spares.start()
    return Door(server, door, follower)


FOLLOW_SECONDS = 5.0  # how soon the door takes `host-key add`, `use` and `remove`


class HostKeysFollower:
    """The door's host keys as the folder has them, checked every few seconds for `host-key add`, `use` and
    `remove` (and for a copy from another node)."""

    def __init__(self, directory: Path, signature_algs: tuple[str, ...]) -> None:
        self.directory, self.signature_algs = directory, signature_algs
        self._seen: frozenset[tuple[str, int, int, int, int]] = frozenset()
        self.files: list[str] = []

    def load(self) -> list[asyncssh.SSHKeyPair]:
        """Pairs for asyncssh: the keys in use (it presents the first pair of each algorithm), the announced ones,
        then the keys in use again as separate pairs. asyncssh proves an announced key with the last pair listed
        for it, and a key exchange changes the signature algorithm of the pair it presents (to SHA-1 `ssh-rsa` for
        a client allowed it, a proof OpenSSH ignores)."""
        self._seen = self._signature()
        in_use, announced = host_key_files(self.directory)
        self.files = [p.name for p in in_use + announced]
        return [_host_key(p, self.signature_algs) for p in in_use + announced + in_use]

    def _signature(self) -> frozenset[tuple[str, int, int, int, int]]:
        """Each file's name, inode, times and size: a key added or removed, ``in-use`` replaced or rewritten (its
        change time moves even where a copy keeps the rest)."""
        entries = [(e.name, e.stat(follow_symlinks=False)) for e in os.scandir(self.directory)]
        return frozenset((name, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size) for name, st in entries)

    async def follow(self, server: asyncssh.SSHAcceptor) -> None:
        """Give ``server`` the folder's keys whenever it changes: the connections after take them."""
        while True:
            await asyncio.sleep(FOLLOW_SECONDS)
            try:
                if self._signature() != self._seen:
                    server.update(server_host_keys=self.load(), send_server_host_keys=True)
                    log.info("host keys now, those in use first: %s", ", ".join(self.files))
            except Exception:  # a half-made key, a missing one: the door keeps the keys it has
                log.exception("reading the host keys in %s failed; the door keeps those it had", self.directory)


class _Channel(SSHServerStreamSession):  # type: ignore[type-arg]
    """One session channel, for SFTP only: counted against ``max_channels_per_connection``; its environment
    variables, breaks, signals and window changes dropped."""

    def __init__(self, door: DoorState, conn: asyncssh.SSHServerConnection) -> None:
        super().__init__(None, lambda chan: SftpSession(chan, door), MIN_SFTP_VERSION)
        self.door, self.conn = door, conn
        door.channels[conn] = door.channels.get(conn, 0) + 1

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[override]
        super().connection_made(chan)
        # asyncssh keeps every environment variable a client sends (1,000 of 128 KiB held 125 MiB); SFTP needs none.
        # The channel itself (line_editor=False): on a line editor's wrapper this would not take
        chan._process_env_request = lambda packet: False  # type: ignore[attr-defined]

    # asyncssh queues a break, a signal and a window change for a reader the door never has: none is taken
    def break_received(self, msec: int) -> bool:
        return False

    def signal_received(self, signal: str) -> None:
        pass

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if (left := self.door.channels.get(self.conn, 1) - 1) > 0:
            self.door.channels[self.conn] = left
        else:
            self.door.channels.pop(self.conn, None)


def _host_key(path: Path, signature_algs: tuple[str, ...]) -> asyncssh.SSHKeyPair:
    """The host key at ``path``, offered with ``signature_algs`` only (asyncssh offers an RSA key with every
    signature it knows, ssh-rsa's SHA-1 among them, whatever ``signature_algs`` says), and signing with the first
    of them until a key exchange chooses another: an RSA key announced to OpenSSH (hostkeys-00@openssh.com) must
    prove itself with SHA-2, or OpenSSH disregards it, and asyncssh proves it with the key's last signature."""
    [keypair] = asyncssh.load_keypairs([asyncssh.read_private_key(str(path))])  # a certificate beside it: ignored
    allowed = tuple(alg.encode() for alg in signature_algs if alg.encode() in keypair.host_key_algorithms)
    keypair.host_key_algorithms = keypair.sig_algorithms = allowed
    keypair.set_sig_algorithm(allowed[0])
    return keypair
