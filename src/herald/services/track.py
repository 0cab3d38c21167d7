"""Track: provider status callbacks, client events and email opens and clicks applied to
deliveries.

Each callback event is applied once (its provider event id is remembered durably), to the
delivery it names (herald's delivery id carried through the provider, else the provider's
message id), through the state machine: an event that would move a delivery backwards (a late
``delivered`` after ``read``) is ignored, never an overwrite.

Opens and clicks (the open pixel, the click redirect, a client or the provider reporting them)
are engagement events: recorded once per delivery (a click once per link; repeats are counted
on the event), judged human or machine (:mod:`herald.domain.engagement`), counted in the funnel
and, when human, moving the delivery to ``read``, all by ``Store.record_engagement``.
"""

from __future__ import annotations

from collections import Counter

import structlog

from herald.domain.engagement import MachinePolicy, is_machine
from herald.domain.errors import IllegalTransition, NotFound
from herald.domain.models import CallbackEvent, Delivery, DeliveryStatus, Reason
from herald.domain.validation import mask
from herald.ports import Clock, Engagement, EngagementEvent, TrackServiceStore
from herald.services.link_tracking import LinkTracker

log = structlog.get_logger("herald.track")

EVENT_TTL = 7 * 86_400.0
_STATUS = {
    "delivered": DeliveryStatus.DELIVERED,
    "failed": DeliveryStatus.FAILED,
    "bounced": DeliveryStatus.FAILED,
}
ENGAGEMENT = frozenset({"opened", "clicked"})
_SUPPRESS = {
    "bounced": Reason.BOUNCED.value,
    "unsubscribed": Reason.COMPLAINT.value,
    "spam": Reason.COMPLAINT.value,
}


class TrackService:
    def __init__(
        self,
        store: TrackServiceStore,
        clock: Clock,
        *,
        links: LinkTracker | None = None,
        policy: MachinePolicy | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.links = links
        self.policy = policy or MachinePolicy()

    # Email opens and clicks ----------------------------------------------------------------------
    async def open(self, token: str, *, user_agent: str | None) -> Engagement | None:
        """The open pixel was fetched. None: the token is not one of herald's (nothing recorded)."""
        delivery_id = self.links.verify_open(token) if self.links is not None else None
        if delivery_id is None:
            log.info("track.open_refused", reason="invalid token")
            return None
        delivery = await self.store.get_delivery(delivery_id)
        if delivery is None:
            return None
        return await self._engage(delivery, "opened", source="pixel", user_agent=user_agent, judge=True)

    async def click(self, token: str, *, user_agent: str | None) -> str:
        """A tracked link was followed: record it and return where it leads, which is only ever
        a link of the rendered message. NotFound: not a valid token, or no such link."""
        named = self.links.verify_click(token) if self.links is not None else None
        if named is None:
            log.info("track.click_refused", reason="invalid token")
            raise NotFound("unknown link")
        delivery_id, index = named
        delivery = await self.store.get_delivery(delivery_id)
        links = ((delivery.content.get("_track") or {}).get("links") or []) if delivery else []
        if delivery is None or not 0 <= index < len(links):
            log.info("track.click_refused", delivery_id=delivery_id, reason="no such link in the message")
            raise NotFound("unknown link")
        url = str(links[index])
        await self._engage(
            delivery, "clicked", source="redirect", user_agent=user_agent, judge=True, link=index, url=url
        )
        return url

    async def engage(
        self, delivery: Delivery, kind: str, *, source: str, url: str | None = None
    ) -> Engagement | None:
        """An open or click a client or the provider reported (trusted as human)."""
        return await self._engage(delivery, kind, source=source, user_agent=None, judge=False, url=url)

    async def _engage(
        self,
        delivery: Delivery,
        kind: str,
        *,
        source: str,
        user_agent: str | None,
        judge: bool,
        link: int = -1,
        url: str | None = None,
    ) -> Engagement | None:
        now = self.clock.now()
        machine, why = False, None
        if judge:
            since = max((t for t in (delivery.sent_at, delivery.delivered_at) if t is not None), default=None)
            machine, why = is_machine(user_agent, None if since is None else now - since, self.policy)
        done = await self.store.record_engagement(
            EngagementEvent(
                delivery_id=delivery.id,
                kind=kind,
                at=now,
                source=source,
                machine=machine,
                why=why,
                link=link,
                url=url,
                user_agent=user_agent,
            )
        )
        if done is not None:
            log.info(
                "delivery.engaged",
                delivery_id=delivery.id,
                kind=kind,
                machine=machine,
                why=why,
                link=link if link >= 0 else None,
                counted=list(done.counted),
                source=source,
            )
        return done

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
                log.warning(
                    "address.suppressed",
                    channel=delivery.channel,
                    address=mask(address),
                    reason=suppress,
                    provider=event.provider,
                )
        if event.status in ENGAGEMENT:
            await self.engage(delivery, event.status, source="provider")
            return "applied"
        target = _STATUS.get(event.status)
        if target is None:
            return "recorded" if suppress else "ignored"
        reason = Reason.BOUNCED.value if event.status == "bounced" else None
        try:
            await self.store.mark_delivery(delivery.id, target, now=now, reason=reason)
        except IllegalTransition:
            return "ignored"
        log.info("delivery.tracked", delivery_id=delivery.id, status=target.value, provider=event.provider)
        return "applied"
