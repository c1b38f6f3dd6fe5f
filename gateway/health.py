"""Is the gateway keeping up? The figures monitoring reads, and the judgement behind `flam-gateway status` (the
metrics endpoint shows the same figures and leaves the judgement to the admin's alert rules).

A dossier passes received, validated and encrypted within seconds, and an owed receipt is written within a
maintenance round. One that stays there much longer is stuck: the workers are paused or dead, gpg hangs, the
ledger or a folder refuses writes. Held dossiers and deliveries waiting for pick-up wait by design (for
``hold_days`` and ``expire_after_days``) and are counted, not judged. The data dir's filesystem is judged too:
when it fills, dossiers wait and uploads fail, so monitoring should hear of it before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.lifecycle import WORKABLE

ACTIONS_WINDOW = timedelta(hours=1)  # the audit actions counted: those of the last hour


@dataclass(frozen=True)
class Gauges:
    """What monitoring reads from the ledger (:meth:`gateway.ledger.store.Ledger.gauges`)."""

    open_transfers: dict[str, tuple[int, datetime]]  # state -> (how many, the oldest one's last move)
    retrying: int  # workable transfers with a failed attempt behind them
    receipts_unwritten: tuple[int, datetime | None]  # how many, and since when the oldest is owed
    actions: dict[str, int]  # audit events since the time asked, by action


@dataclass(frozen=True)
class Space:
    """Room left on the data dir's filesystem (:meth:`gateway.folders.Folders.space`), as its user may use it."""

    free_bytes: int
    total_bytes: int
    free_inodes: int
    total_inodes: int  # 0 where the filesystem does not count them


def short_of_space(space: Space, min_free_bytes: int) -> list[str]:
    """Why the data dir's filesystem may soon refuse the gateway's writes (nothing: room enough)."""
    reasons = []
    if space.free_bytes < min_free_bytes:
        reasons.append(
            f"the data dir's filesystem has {mib(space.free_bytes)} free of {mib(space.total_bytes)}, less than "
            f"{mib(min_free_bytes)}: once it is full, dossiers wait and uploads fail"
        )
    if space.free_inodes < space.total_inodes // 100:
        reasons.append(
            f"the data dir's filesystem has {space.free_inodes} of {space.total_inodes} inodes free, less than 1 %: "
            "every upload, delivery and receipt needs one"
        )
    return reasons


def near_quota(waiting: list[tuple[str, int, int]], percent: int) -> list[str]:
    """The organs (id, bytes waiting at the gateway, upload quota: 0 for none) that have ``percent`` of their quota
    waiting or more: their next uploads may be refused."""
    return [
        f"{organ} has {sized(bytes_waiting)} of its {sized(quota)} upload quota waiting at the gateway "
        f"({100 * bytes_waiting // quota} %): uploads past it are refused; see what waits (`transfers list --organ "
        f"{organ} --status held`, and partial uploads in its outbox), or give it more (`organ quota`)"
        for organ, bytes_waiting, quota in waiting
        if quota and bytes_waiting * 100 >= quota * percent
    ]


def mib(size: int) -> str:
    """A size in MiB, for people."""
    return f"{size / 2**20:,.1f} MiB"


def sized(size: int) -> str:
    """A size in GiB from 1 GiB up, else in MiB, for people."""
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else mib(size)


def stuck(gauges: Gauges, now: datetime, after: timedelta) -> list[str]:
    """Why the gateway looks stuck at ``now`` (nothing: it keeps up): work or receipts older than ``after``."""
    reasons = []
    for state in sorted(WORKABLE):
        count, oldest = gauges.open_transfers.get(state.value, (0, now))
        if now - oldest > after:
            reasons.append(
                f"{count} {state.value} transfer(s), the oldest unmoved for {_age(now - oldest)}: are the workers "
                "running (workers > 0), and can they write the ledger, the spool and the inboxes?"
            )
    count, owed_since = gauges.receipts_unwritten
    if owed_since is not None and now - owed_since > after:
        reasons.append(
            f"{count} receipt(s) not written, the oldest owed for {_age(now - owed_since)}: can the gateway write "
            "the senders' receipts folders?"
        )
    return reasons


def _age(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds // 60 % 60} min"
