"""Is the gateway keeping up? The judgement behind `flam-gateway status` and the metrics endpoint.

A dossier passes received, validated and encrypted within seconds, and an owed receipt is written within a
maintenance round. One that stays there much longer is stuck: the workers are paused or dead, gpg hangs, the
ledger or a folder refuses writes. Held dossiers and deliveries waiting for pick-up wait by design (for
``hold_days`` and ``expire_after_days``) and are counted, not judged.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.ledger.store import Gauges
from gateway.lifecycle import WORKABLE

ACTIONS_WINDOW = timedelta(hours=1)  # the audit actions counted: those of the last hour


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
