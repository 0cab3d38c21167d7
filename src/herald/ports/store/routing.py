"""The accepting and routing roles of the store, and the reads of notifications.

Every method is one transaction (all or nothing). A notification moves ``accepted`` →
``routing`` (leased by one router) → ``routed``; its deliveries are written as routing goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from herald.domain.models import Delivery, EventRecord, Notification
from herald.ports.records import (
    IdempotencyClaim,
    IdempotencyRecord,
    NotificationFilter,
    RoutedBatch,
    RoutedClaim,
)


class AcceptStore(Protocol):
    """The durable accept: a request's notifications, its idempotency key and its event record
    are committed together or not at all."""

    async def get_idempotent(self, scope: str, key: str, *, now: float) -> IdempotencyRecord | None:
        """The live (not expired) record of ``key``, written by a committed request."""
        ...

    async def create_notifications(
        self,
        notifications: Sequence[Notification],
        *,
        idempotency: Sequence[IdempotencyClaim] = (),
        events: Sequence[EventRecord] = (),
    ) -> None:
        """Commit notifications (status accepted), the ``idempotency`` keys of the requests
        that made them, and the ``events`` they were made from, in one transaction. A key that
        another request already holds (live) raises :class:`IdempotencyKeyTaken` with that
        request's record, and nothing is committed.

        A notification the accepting process routes itself comes ``routing`` instead, leased
        to its ``routing_owner`` until ``routing_until``, and is written so. Ids must be new: an
        existing notification id fails the whole transaction."""
        ...


class RoutingStore(Protocol):
    """The router's work: lease accepted notifications, write their deliveries chunk by chunk
    under that lease, and finish (or fail) them."""

    async def claim_unrouted(
        self, *, owner: str, limit: int, lease: float, now: float, min_rank: int = 0
    ) -> list[Notification]:
        """Lease accepted notifications (or ones whose routing lease expired) for routing;
        new ones of priority rank ``min_rank`` or lower only (a bulk worker leaves critical and
        high to the routers of the processes that send them).

        At most ``limit``, moved to ``routing`` under ``owner``'s lease until ``now + lease``:
        new ones lane by lane (critical first), oldest first in a lane; then, looked for at most
        once a second, ones of any lane whose router's lease ran out. Concurrent routers never
        get the same notification (PostgreSQL: SKIP LOCKED). Returned by lane, then age."""
        ...

    async def save_routed(self, batch: RoutedBatch, *, owner: str, now: float, lease: float = 60.0) -> bool:
        """Insert deliveries (ignoring ones that already exist), advance routing progress and
        renew the routing lease for ``lease`` seconds.

        Returns False when ``owner`` no longer holds the routing lease.
        """
        ...

    async def save_routed_many(
        self,
        batches: Sequence[RoutedBatch],
        *,
        owner: str,
        now: float,
        lease: float = 60.0,
        claim: RoutedClaim | None = None,
    ) -> list[bool]:
        """:meth:`save_routed` for several notifications in one transaction.

        With ``claim``, the deliveries it names are inserted already claimed (see
        :class:`RoutedClaim`); those this call inserted so are left with status ``sending``
        in ``batches``, every other one it named with the status it was written with.

        Returns one flag per batch, in order: False (and nothing written for it) when ``owner``
        no longer holds that notification's routing lease. For a held one: its ``dedup_key``
        is claimed per user for ``dedup_window`` seconds, and the queued or scheduled
        deliveries of users another live notification holds it for are written ``skipped``
        with reason ``duplicate`` (changed so in ``batches`` too); deliveries are inserted
        (ids that exist are ignored: a pass taken over after a lost lease writes some again),
        with their outbox rows when the store feeds a broker and their funnel counts when
        routing ended them; a ``finished`` batch makes the notification ``routed`` and frees
        the lease, any other one saves the progress and renews the lease to ``now + lease``."""
        ...

    async def fail_routing(self, notification_id: str, error: str, *, now: float) -> None:
        """Mark the notification ``failed`` with ``error`` (it cannot be routed: its template
        no longer exists) and free its routing lease, whoever holds it. Deliveries already
        written are left as they are."""
        ...

    async def fallback_candidates(self, notification_id: str) -> list[Delivery]:
        """Every delivery of the recipients of ``notification_id`` that have a failed or dead one."""
        ...


class NotificationStore(Protocol):
    """Reads of notifications and their deliveries, and cancelling a notification."""

    async def get_notification(self, notification_id: str) -> Notification | None:
        """The notification as stored (None: no such notification)."""
        ...

    async def list_notifications(self, flt: NotificationFilter) -> list[Notification]:
        """Notifications matching every given field of ``flt``, newest first, below
        ``flt.cursor`` (the last id of the page before), at most ``flt.limit``."""
        ...

    async def notifications_in_progress(self, notification_ids: Sequence[str]) -> set[str]:
        """Those of ``notification_ids`` with a delivery that is not final yet."""
        ...

    async def get_deliveries(
        self,
        notification_id: str,
        *,
        with_attempts: bool = True,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Delivery]:
        """The notification's deliveries in id order: those after ``after``, at most ``limit``.
        Each with its attempts, oldest first, unless ``with_attempts`` is False."""
        ...

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """The delivery with its attempts, oldest first (None: no such delivery)."""
        ...

    async def status_counts(self, notification_id: str) -> dict[str, int]:
        """How many of the notification's deliveries are in each status (statuses with none
        are absent)."""
        ...

    async def cancel_notification(self, notification_id: str, *, now: float) -> tuple[int, int]:
        """Cancel every delivery not yet handed to a worker (pending, scheduled, queued,
        retrying). Returns (cancelled by this call, left unchanged: sent, in flight or final).

        A notification not routed yet is cancelled itself, so routing stops (deliveries it
        writes afterwards find the lease gone). Raises NotFound for an unknown notification.
        Idempotent: a repeat cancels nothing more and returns (0, the same second count)."""
        ...
