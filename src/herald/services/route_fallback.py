"""Route, the fallback pass: move each recipient whose delivery failed for good, or could not
be reached, to the next channel of the notification's chain (``fallback``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import structlog

from herald.domain.models import Delivery, Notification, Recipient, Template
from herald.ports import RecipientContext, RouterServiceStore
from herald.services import render_pool
from herald.services.route_build import DeliveryBuilder

log = structlog.get_logger("herald.route")

ContextReader = Callable[[Sequence[Recipient], bool], Awaitable[RecipientContext]]


class FallbackPass:
    def __init__(self, store: RouterServiceStore, builder: DeliveryBuilder, context: ContextReader) -> None:
        self.store = store
        self.builder = builder
        self._context = context  # (recipients, with push devices) -> their RecipientContext

    async def __call__(
        self, n: Notification, template: Template | None, routed_now: set[str]
    ) -> list[Delivery]:
        """The next deliveries of the chains of ``n``'s recipients not routed in this pass.

        Runs whenever a fallback notification finishes routing, including when a permanent
        failure handed it back to the router (``record_results`` reopens it in the same
        transaction). Only recipients with a failed or dead delivery are read.
        """
        existing = await self.store.fallback_candidates(n.id)
        by_user: dict[str, dict[str, Delivery]] = {}
        for d in existing:
            if d.user_id not in routed_now:
                by_user.setdefault(d.user_id, {})[d.channel] = d
        if not by_user:
            return []
        inline = {r.user_id: r for r in n.recipients}
        recipients = [inline.get(u) or Recipient(user_id=u) for u in by_user]
        ctx = await self._context(recipients, "push" in (n.channels or []))
        category = self.builder.catalog.category(n.category)
        now = self.builder.clock.now()
        chain = self.builder.chain

        def chains() -> list[Delivery]:
            out: list[Delivery] = []
            for r in recipients:
                out += chain(n, template, category, r.user_id, ctx, now, by_user[r.user_id])
            return out

        out = await render_pool.for_routing(chains)
        if out:
            log.info("notification.fallback", notification_id=n.id, deliveries=len(out))
        return out
