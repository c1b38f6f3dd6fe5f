"""Is the gateway keeping up? The figures monitoring reads, and the judgement behind `flam-gateway status` (the
metrics endpoint shows the same figures and leaves the judgement to the admin's alert rules).

A dossier passes received, validated and encrypted within seconds, and an owed receipt is written within a
maintenance round. One that stays there much longer is stuck: the workers are paused or dead, gpg hangs, the
ledger or a folder refuses writes. Held dossiers and deliveries waiting for pick-up wait by design (for
``hold_days`` and ``expire_after_days``) and are counted, not judged.
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
