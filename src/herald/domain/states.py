"""The delivery state machine (PRODUCT.md section 2).

Every status change goes through :func:`check_transition`; stores express the same table as
``WHERE status IN (...)`` guards so that a concurrent writer cannot overwrite a later state.
"""

from __future__ import annotations

from herald.domain.errors import IllegalTransition
from herald.domain.models import DeliveryStatus as S

TRANSITIONS: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.QUEUED, S.SCHEDULED, S.SKIPPED, S.CANCELLED, S.FAILED}),
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED, S.SKIPPED}),
    S.QUEUED: frozenset({S.SENDING, S.CANCELLED, S.SKIPPED, S.SCHEDULED}),
    # SENDING -> RETRYING also covers a lease that expired while a worker died mid-send.
    S.SENDING: frozenset({S.SENT, S.RETRYING, S.FAILED, S.DEAD, S.SKIPPED, S.QUEUED, S.SCHEDULED}),
    S.RETRYING: frozenset({S.SENDING, S.CANCELLED, S.SKIPPED, S.DEAD}),
    S.SENT: frozenset({S.DELIVERED, S.READ, S.FAILED}),
    S.DELIVERED: frozenset({S.READ}),
    S.READ: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),  # replay
    S.DEAD: frozenset({S.QUEUED}),  # replay
    S.SKIPPED: frozenset(),
    S.CANCELLED: frozenset(),
}

FINAL: frozenset[S] = frozenset({S.SENT, S.DELIVERED, S.READ, S.FAILED, S.DEAD, S.SKIPPED, S.CANCELLED})
CANCELLABLE: frozenset[S] = frozenset({S.PENDING, S.SCHEDULED, S.QUEUED, S.RETRYING})
CLAIMABLE: frozenset[S] = frozenset({S.QUEUED, S.RETRYING})
SENT_OR_LATER: frozenset[S] = frozenset({S.SENT, S.DELIVERED, S.READ})


def can_transition(current: S, new: S) -> bool:
    return new in TRANSITIONS[current]


def check_transition(current: S, new: S) -> None:
    if not can_transition(current, new):
        raise IllegalTransition(f"a delivery cannot go from {current.value} to {new.value}")


def sources_of(new: S) -> frozenset[S]:
    """Every status from which ``new`` may be reached."""
    return frozenset(src for src, targets in TRANSITIONS.items() if new in targets)
