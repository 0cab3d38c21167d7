"""The ``in_app`` provider: herald's own inbox.

The delivery row itself is the inbox item; once it is ``sent`` it shows in
``GET /v1/users/{id}/inbox``. The transaction that records it ``sent`` also numbers it in the
user's live feed (the store's ``record_results``), so an item reported ``sent`` is one a
reconnecting stream replays; once that commits, the user's streams in every process are woken
(:class:`herald.inbox.InboxHub`). Sending hands the hub the item as streams show it, so that
a stream in this process can show it without reading it back.
"""

from __future__ import annotations

from herald.domain.errors import ServiceUnavailable, TransientDeliveryError
from herald.domain.models import OutboundMessage, SendReceipt
from herald.ports import InboxPublisher


class InAppProvider:
    name = "in_app"

    def __init__(self, publisher: InboxPublisher | None = None) -> None:
        self.publisher = publisher

    async def send(self, message: OutboundMessage) -> SendReceipt:
        if self.publisher is None:
            return SendReceipt(code="stored", provider_message_id=message.delivery_id)
        try:
            await self.publisher.publish(
                message.user_id,
                {
                    "id": message.delivery_id,
                    "notification_id": message.notification_id,
                    "category": message.category,
                    "title": message.content.get("title"),
                    "body": message.content.get("body"),
                    "url": message.content.get("url"),
                },
            )
        except ServiceUnavailable as exc:  # the database is away: retried like any outage
            raise TransientDeliveryError(f"inbox feed unavailable: {exc.detail}", code="feed") from exc
        return SendReceipt(code="stored", provider_message_id=message.delivery_id)

    async def close(self) -> None:
        return None
