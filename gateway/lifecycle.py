"""The life of a dossier: its states and the ONE table of transitions between them.

```
RECEIVED -> VALIDATED -> ENCRYPTED -> DELIVERED -> FETCHED   (picked up: receipt 110)
    |           |            |             +-----> EXPIRED   (not picked up in time: receipt 204)
    +-----------+------------+---> REJECTED (receipt with every reason; the original kept in quarantine until
                |                           it is encrypted: from ENCRYPTED only 301/310/311, below)
                +---> HELD ---> VALIDATED (cause gone) | REJECTED 311 (after the hold time; 301/310 at once when
                                the admin disables the recipient or denies the route meanwhile)
```

ENCRYPTED is REJECTED only when, before the dossier reached the inbox, the admin has disabled the recipient or
denied the route (301/310) or withdrawn or replaced the recipient's key (311): a failed delivery is the gateway's
fault (disk, permissions) and is retried.
A pair not in :data:`TRANSITIONS` raises :class:`IllegalTransition` and changes nothing.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.errors import IllegalTransition


class State(StrEnum):
    RECEIVED = "received"
    VALIDATED = "validated"
    HELD = "held"
    ENCRYPTED = "encrypted"
    DELIVERED = "delivered"
    FETCHED = "fetched"
    EXPIRED = "expired"
    REJECTED = "rejected"


# source -> target -> the receipt status code the sender gets for that transition (None: no receipt)
TRANSITIONS: dict[State, dict[State, int | None]] = {
    State.RECEIVED: {State.VALIDATED: None, State.REJECTED: None},
    State.VALIDATED: {State.ENCRYPTED: None, State.HELD: 601, State.REJECTED: None},
    State.HELD: {State.VALIDATED: None, State.REJECTED: 311},
    State.ENCRYPTED: {State.DELIVERED: 100, State.REJECTED: None},
    State.DELIVERED: {State.FETCHED: 110, State.EXPIRED: 204},
    State.FETCHED: {},
    State.EXPIRED: {},
    State.REJECTED: {},
}

TERMINAL: frozenset[State] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
# States of a life not over: deliveries waiting for pick-up and held dossiers included (what fsck and monitoring read).
OPEN: frozenset[State] = frozenset(set(State) - TERMINAL)

# States whose file the gateway still holds in its spool (what an organ's upload quota counts, with its outbox).
IN_SPOOL: frozenset[State] = frozenset(OPEN - {State.DELIVERED})

# States a worker picks up and moves on (the rest wait for a person: pick-up, expiry, hold time).
WORKABLE: frozenset[State] = frozenset({State.RECEIVED, State.VALIDATED, State.ENCRYPTED})

# Steps that change nothing outside the ledger and owe no receipt: a worker records them in the same
# transaction as the step after them (a crash in between only means the step is done again).
RECORDED_WITH_NEXT: frozenset[tuple[State, State]] = frozenset({(State.RECEIVED, State.VALIDATED)})


def check(source: State | str, target: State | str) -> int | None:
    """Return the receipt status due for ``source -> target``; raise if the pair is not in the table.

    A rejection's status code comes from its problems, so REJECTED targets return None here
    except for the hold timeout (311).
    """
    src, dst = State(source), State(target)
    targets = TRANSITIONS[src]
    if dst not in targets:
        raise IllegalTransition(src.value, dst.value)
    return targets[dst]
