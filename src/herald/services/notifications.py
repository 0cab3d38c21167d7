"""What was sent and what became of it: notifications and their deliveries read a page at a
time, cancel, tracking marks, a delivery's engagement, a user's inbox, an event's record.

The API (``/v1/notifications``, ``/v1/deliveries``, ``/v1/users/{id}/inbox``, ``/v1/events``),
``herald status`` and the console read through this service; none of them reaches the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from herald.domain.errors import NotFound
from herald.domain.models import Delivery, DeliveryStatus, EventRecord, Notification, NotificationStatus
from herald.ports import Clock, NotificationFilter, NotificationServiceStore


@dataclass(slots=True)
class NotificationPage:
    """A notification, a page of its deliveries (in id order) and where the next page starts.

    ``counts``: its deliveries per status; None when the page holds all of them and the caller
    did not ask for them (they are counted from the page then)."""

    notification: Notification
    deliveries: list[Delivery]
    counts: dict[str, int] | None
    next_cursor: str | None


@dataclass(slots=True)
class Cancelled:
    """What a cancel did: the notification before and after, deliveries cancelled and left as
    they were (already sent or finished), and the counts per status after (routed only)."""

    before: Notification
    after: Notification | None
    cancelled: int
    unchanged: int
    counts_after: dict[str, int] | None

    @property
    def routing_stopped(self) -> bool:
        """Nothing more will be made for it (a topic's fan-out, recipients not yet routed)."""
        return (
            self.after is not None
            and self.after.status == NotificationStatus.CANCELLED
            and self.before.status != NotificationStatus.CANCELLED
        )


class NotificationService:
    def __init__(self, store: NotificationServiceStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # Notifications -----------------------------------------------------------------------------
    async def page(
        self, notification_id: str, *, after: str | None = None, limit: int, counted: bool = False
    ) -> NotificationPage | None:
        """The notification and a page of its deliveries; None when it does not exist. A
        broadcast to a million is never read in one piece. ``counted``: always count its
        deliveries per status (otherwise only when they do not all fit in this page)."""
        n = await self.store.get_notification(notification_id)
        if n is None:
            return None
        page = await self.store.get_deliveries(notification_id, after=after, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        counts = None
        if counted or more or after is not None:
            counts = await self.store.status_counts(notification_id)
        return NotificationPage(n, page, counts, page[-1].id if more else None)

    async def find(self, flt: NotificationFilter) -> tuple[list[Notification], set[str]]:
        """Notifications newest first, and which of the routed ones still have a delivery in
        progress (what their status shows)."""
        items = await self.store.list_notifications(flt)
        routed = [n.id for n in items if n.status == NotificationStatus.ROUTED]
        open_ids = await self.store.notifications_in_progress(routed) if routed else set()
        return items, open_ids

    async def cancel(self, notification_id: str) -> Cancelled:
        """Cancel what has not been sent (NotFound if it does not exist)."""
        before = await self.store.get_notification(notification_id)
        if before is None:
            raise NotFound(f"notification {notification_id} does not exist")
        cancelled, remaining = await self.store.cancel_notification(notification_id, now=self.clock.now())
        after = await self.store.get_notification(notification_id)
        counts = None
        if after is not None and after.status == NotificationStatus.ROUTED:
            counts = await self.store.status_counts(notification_id)
        return Cancelled(before, after, cancelled, remaining, counts)

    # Deliveries --------------------------------------------------------------------------------
    async def delivery(self, delivery_id: str) -> Delivery:
        d = await self.store.get_delivery(delivery_id)
        if d is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        return d

    async def mark(self, delivery_id: str, status: DeliveryStatus) -> Delivery:
        """A tracking event (delivered, read) reported by a client."""
        return await self.store.mark_delivery(delivery_id, status, now=self.clock.now())

    async def engagement(self, delivery_id: str) -> tuple[Delivery, list[dict[str, object]]]:
        """The delivery and its opens and clicks, oldest first (NotFound if it does not exist)."""
        d = await self.delivery(delivery_id)
        return d, await self.store.list_engagement(delivery_id)

    # A user's inbox ----------------------------------------------------------------------------
    async def inbox(
        self, user_id: str, *, unread_only: bool, cursor: str | None, limit: int
    ) -> tuple[list[Delivery], int]:
        """A page of the user's in-app items, newest first, and their unread count."""
        return await self.store.list_inbox(user_id, unread_only=unread_only, cursor=cursor, limit=limit)

    async def read_all(self, user_id: str) -> int:
        """Mark every unread item read; returns how many changed."""
        return await self.store.mark_all_read(user_id, now=self.clock.now())

    async def read(self, user_id: str, delivery_id: str) -> tuple[Delivery, int]:
        """Mark one of the user's items read; returns it and the unread count after."""
        d = await self.store.mark_delivery(
            delivery_id, DeliveryStatus.READ, now=self.clock.now(), user_id=user_id
        )
        _, unread = await self.store.list_inbox(user_id, unread_only=True, cursor=None, limit=1)
        return d, unread

    # Events ------------------------------------------------------------------------------------
    async def event(self, event_id: str) -> EventRecord:
        record = await self.store.get_event(event_id)
        if record is None:
            raise NotFound(f"event {event_id} does not exist")
        return record
