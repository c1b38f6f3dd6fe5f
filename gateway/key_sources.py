"""Where an organ's SSH key may log in from: OpenSSH's ``from="…"`` option on the key's authorized_keys line,
with addresses and networks only (the door looks up no host names).

A key line is stored as ``from="192.0.2.0/24,!192.0.2.7" ssh-ed25519 AAAA… comment``, as in OpenSSH's
authorized_keys; a line without the option logs in from any address.
"""

from __future__ import annotations

import ipaddress

_OPTION = 'from="'
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_sources(text: str) -> str:
    """``text`` (addresses or networks separated by commas, each excluded by a leading '!') checked and written
    canonically; ValueError names the first entry that is neither, or says that nothing is allowed."""
    entries = []
    for raw in text.split(","):
        entry = raw.strip()
        try:
            network = ipaddress.ip_network(entry.removeprefix("!"), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
        entries.append(("!" if entry.startswith("!") else "") + str(network))
    if all(entry.startswith("!") for entry in entries):
        raise ValueError("it only excludes: name the addresses or networks the key may log in from")
    return ",".join(entries)


def with_sources(key_line: str, sources: str) -> str:
    """The stored line of ``key_line`` limited to ``sources`` (checked by :func:`parse_sources`; '' for any)."""
    return f'{_OPTION}{sources}" {key_line}' if sources else key_line


def split_line(line: str) -> tuple[str, str]:
    """(sources, the OpenSSH public key) of a stored key line; sources '' for any address."""
    if line.startswith(_OPTION):
        sources, _, key = line.removeprefix(_OPTION).partition('" ')
        return sources, key
    return "", line


def allowed_from(sources: str, address: str) -> bool:
    """Whether a client at ``address`` may log in with a key limited to ``sources``: an exclusion that matches
    refuses, as in OpenSSH; otherwise one of the others must match ('' allows every address)."""
    if not sources:
        return True
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:192.0.2.7
    entries: list[tuple[bool, Network]] = [
        (entry.startswith("!"), ipaddress.ip_network(entry.removeprefix("!"))) for entry in sources.split(",")
    ]
    if any(excluded and ip in network for excluded, network in entries):
        return False
    return any(not excluded and ip in network for excluded, network in entries)
