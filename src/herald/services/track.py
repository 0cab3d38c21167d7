"""Track: provider status callbacks and client events applied to deliveries.

Each callback event is applied once (its provider event id is remembered durably), to the
delivery it names (herald's delivery id carried through the provider, else the provider's
message id), through the state machine: an event that would move a delivery backwards (a late
``delivered`` after ``read``) is ignored, never an overwrite.
"""

from __future__ import annotations

from collections import Counter

import structlog

from herald.domain.errors import IllegalTransition
from herald.domain.models import CallbackEvent, Delivery, DeliveryStatus
from herald.domain.validation import mask
from herald.ports import Clock, Store

log = structlog.get_logger("herald.track")

EVENT_TTL = 7 * 86_400.0
_STATUS = {
    "delivered": DeliveryStatus.DELIVERED,
    "opened": DeliveryStatus.READ,
    "clicked": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
    "bounced": DeliveryStatus.FAILED,
}
_SUPPRESS = {"bounced": "bounced", "unsubscribed": "complaint", "spam": "complaint"}


class TrackService:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def apply_all(self, events: list[CallbackEvent]) -> dict[str, int]:
        outcomes = Counter([await self.apply(e) for e in events])
        return dict(outcomes)

    async def apply(self, event: CallbackEvent) -> str:
        now = self.clock.now()
        if event.event_id and not await self.store.first_seen(
            f"callback:{event.provider}:{event.event_id}", ttl=EVENT_TTL, now=now
        ):
            return "duplicate"
        delivery: Delivery | None = None
        if event.delivery_id:
            delivery = await self.store.get_delivery(event.delivery_id)
        if delivery is None and event.provider_message_id:
            delivery = await self.store.find_delivery(event.provider_message_id)
        if delivery is None:
            log.info("callback.unknown_delivery", provider=event.provider, status=event.status)
            return "unknown_delivery"
        suppress = _SUPPRESS.get(event.status)
        if suppress:
            address = event.address or delivery.address
            if address:
                await self.store.suppress_address(delivery.channel, address, suppress, now=now)
                log.warning("address.suppressed", channel=delivery.channel, address=mask(address),
                            reason=suppress, provider=event.provider)
        target = _STATUS.get(event.status)
        if target is None:
            return "recorded" if suppress else "ignored"
        try:
            await self.store.mark_delivery(delivery.id, target, now=now)
        except IllegalTransition:
            return "ignored"
        log.info("delivery.tracked", delivery_id=delivery.id, status=target.value, provider=event.provider)
        return "applied"
