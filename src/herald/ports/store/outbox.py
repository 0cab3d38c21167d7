"""The broker roles of the store: the transactional outbox, claims by delivery id, and named
leases (leader election). Every method is one transaction.

With the outbox on (``SqlStore(outbox=True)``, set when the queue is a broker), every
transaction that makes a delivery claimable (queued or retrying) also writes an outbox row; the
relay publishes due rows after commit and deletes them once the broker confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from herald.domain.models import Delivery
from herald.ports.records import NamedLease, OutboxItem


class OutboxStore(Protocol):
    """What the outbox relay reads and clears (``adapters/queue/outbox_relay.py``)."""

    async def claim_outbox(
        self, *, limit: int, now: float, lease: float, ranks: Sequence[int] | None = None
    ) -> list[OutboxItem]:
        """Take up to ``limit`` due outbox rows (highest lane first, then oldest due first) for
        publishing; they are hidden from other relays for ``lease`` seconds (PostgreSQL: SKIP
        LOCKED). ``ranks``: only rows of these priority lanes (None: every lane).

        Hidden by moving their due time to ``now + lease``: a relay that dies leaves them to be
        published again then. The items returned carry their due time from before."""
        ...

    async def release_outbox(self, items: Sequence[OutboxItem]) -> None:
        """Give rows whose publish failed back, due as before."""
        ...

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        """Forget rows the broker confirmed (ids already gone are ignored)."""
        ...

    async def outbox_next_due(self, ranks: Sequence[int] | None = None) -> float | None:
        """The earliest due time in the outbox, of the lanes ``ranks`` if given (None when empty)."""
        ...


class BrokerClaimStore(Protocol):
    """What a broker queue's consumers do with the delivery ids its messages carry: claim them
    exactly as the ``sql`` queue claims, hold them, or have them published again."""

    async def claim_ids(
        self, delivery_ids: Sequence[str], *, owner: str, lease: float, now: float, early: float = 0.0
    ) -> list[Delivery]:
        """Claim these deliveries (queued or retrying, due by ``now + early``) for ``owner``,
        exactly like a queue claim; others are left alone. A claimable delivery not due yet gets
        a fresh outbox row (its message came early: clock skew, or a stale duplicate).

        Claimed ones are ``sending`` under ``owner``'s lease until ``now + lease``; concurrent
        claimers of one id: one gets it. Returned by lane (critical first), then due time."""
        ...

    async def requeue_ids(self, delivery_ids: Sequence[str], *, due_at: float, now: float) -> int:
        """Write outbox rows due at ``due_at`` for those of these deliveries still claimable.

        A delivery due later than ``due_at`` keeps its own due time. Returns how many rows
        were written."""
        ...

    async def extend_leases(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        """Extend the send lease of ``owner``'s deliveries.

        Only those still ``sending`` under ``owner``'s lease move to ``until``; the others
        (reclaimed, recorded) are left alone."""
        ...


class LeaseStore(Protocol):
    """Named leases: who is the one active scheduler (``services/leader.py``)."""

    async def acquire_or_renew(self, name: str, owner: str, *, ttl: float, now: float) -> bool:
        """Take lease ``name`` for ``ttl`` seconds if it is free or expired, or renew it if
        ``owner`` holds it. Atomic: of concurrent contenders exactly one wins.

        Returns whether ``owner`` holds it now. A renewal keeps the time it was acquired."""
        ...

    async def get_lease(self, name: str) -> NamedLease | None:
        """Who holds (or last held, if it ran out) lease ``name``, since when and until when;
        None when nobody took it or it was released."""
        ...

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up (a graceful stop): the next contender takes it at once."""
        ...
