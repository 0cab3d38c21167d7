"""The work queues senders claim deliveries from, and the routers' cross-process wake-ups.

Implemented by ``adapters/queue``: ``sql`` (the deliveries table is the queue; PostgreSQL
LISTEN/NOTIFY wakes other processes), ``amqp`` and ``kafka`` (fed by the outbox relay, claimed
by id through :class:`herald.ports.store.BrokerClaimStore`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from herald.domain.models import Delivery


@dataclass(slots=True)
class Claim:
    """A delivery handed to a sender, and the lease owner it was claimed for."""

    delivery: Delivery
    owner: str


class Queue(Protocol):
    """Per-channel work queues with priority lanes.

    ``claim`` hands out deliveries due now, highest lane first, under a lease held by
    ``owner``; concurrent claimers (in any process) never get the same delivery. A claimed
    delivery is not handed out again while its lease runs; once the lease has expired,
    ``Store.reclaim_expired_leases`` records the ambiguous ``lost`` attempt and makes it
    claimable again.
    """

    async def start(self) -> None:
        """Connect (a broker; the wake-up listener on PostgreSQL). Bad credentials fail here;
        an unreachable broker does not (the outbox keeps every delivery until it is back)."""
        ...

    async def close(self) -> None:
        """Stop listening and disconnect. Deliveries claimed and not yet recorded keep their
        lease until it runs out (then they are reclaimed); nothing is lost."""
        ...

    async def claim(
        self,
        channel: str,
        *,
        owner: str,
        limit: int,
        max_rank: int,
        lease: float,
        now: float,
        min_rank: int = 0,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries with ``min_rank`` <= priority rank <= ``max_rank``
        (a sender of some lanes only never takes, nor holds back, those of the others).

        Every returned delivery was moved to ``sending`` under ``owner``'s lease until
        ``now + lease`` by a committed store transaction before it is returned, so no other
        claimer has it. Higher lanes are taken before lower ones; empty when nothing is due
        (the call does not wait: see :meth:`wait`)."""
        ...

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        """Move the lease of those of ``delivery_ids`` that ``owner`` still holds (status
        ``sending``) to ``until``; others (reclaimed, recorded) are left alone. A long send keeps
        its deliveries this way so they are not reclaimed under it."""
        ...

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        """Signal that ``channel`` (or every channel) may have new work; ``top_rank``: its
        highest lane when known (0, critical, when not), so that this process's waiters of
        higher lanes only sleep on (other processes are woken for the channel)."""
        ...

    def wake_local(self, channel: str) -> None:
        """Wake this process's waiters of ``channel`` only (a send slot came free): not other
        processes, not the wake listeners."""
        ...

    def hand_over(self, deliveries: Sequence[Delivery]) -> None:
        """Critical/high deliveries this process just made claimable (committed). A queue that
        can let this process's own senders of their lanes claim them at once, without waiting
        for the broker's round trip, does so; whatever the broker brings later for them finds
        them claimed. Others do nothing (:meth:`wake` is called as well)."""
        ...

    def add_wake_listener(self, listener: Callable[[str | None], None]) -> None:
        """Also call ``listener`` with the channel of every :meth:`wake` of this process."""
        ...

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        """Return when woken for ``channel`` (work in a lane up to ``max_rank``) or after
        ``timeout`` seconds."""
        ...


@runtime_checkable
class RouterWakeups(Protocol):
    """A queue that also wakes the routers of other processes (PostgreSQL ``NOTIFY``): what a
    process without a router (``herald api``) accepted is routed at once, not at the routers'
    next poll."""

    def wake_routers(self, urgent: bool) -> None:
        """New notifications to route; ``urgent``: a critical one among them. Best effort:
        a lost wake-up costs the routers' poll interval, never a notification."""
        ...

    def add_route_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(urgent)`` when another process wakes the routers."""
        ...
