"""Route, the budget stage: per-(user, category) budgets on deliveries about to go out.

Which deliveries count is the domain's rule (:func:`herald.domain.audience.counts_against_budget`);
this module keeps the count in the shared cache and skips what is over it (``rate_limited``).
"""

from __future__ import annotations

from collections.abc import Sequence

from herald.domain import audience
from herald.domain.models import Delivery, DeliveryStatus, Reason
from herald.domain.quiet_hours import parse_budget
from herald.ports import Cache, Clock
from herald.services.catalog import Catalog


class Budgets:
    def __init__(self, cache: Cache | None, catalog: Catalog, clock: Clock) -> None:
        self.cache = cache
        self.catalog = catalog
        self.clock = clock

    async def apply(self, deliveries: Sequence[Delivery]) -> None:
        """Enforce per-(user, category) budgets on deliveries about to be queued or scheduled.

        One notification counts once per user whatever its number of channels; all of that
        user's channels share the verdict. Critical priority, items held for a digest and
        categories without a budget never consume or are blocked. The count is one atomic
        ``hit_window`` in the shared cache, so concurrent routers cannot overshoot.

        A re-run after a crash (same notification, same user) must not count twice: a marker
        ``budget-hit:{notification}:{user}`` is set first; when it already exists, a previous run
        counted this message and it is let through uncounted (already-saved deliveries are not
        re-inserted anyway). When the window is full the marker is removed again so a re-run
        re-checks instead of letting it through. A crash between the two cache calls can at
        worst count one message without delivering it.

        Deliveries over budget are left skipped ``rate_limited``; their ``delivery.skipped`` is
        told once they are written (RouterService).
        """
        if self.cache is None:
            return
        groups: dict[tuple[str, str, str], list[Delivery]] = {}
        for d in deliveries:
            category = self.catalog.categories.get(d.category or "")
            if not audience.counts_against_budget(category, d.priority, d.status, d.reason):
                continue
            assert category is not None
            groups.setdefault((d.notification_id, d.user_id, category.name), []).append(d)
        now = self.clock.now()
        for (notification_id, user_id, cat_name), group in groups.items():
            budget_str = self.catalog.categories[cat_name].budget
            assert budget_str is not None
            budget = parse_budget(budget_str)
            marker = f"budget-hit:{notification_id}:{user_id}"
            if not await self.cache.add_if_absent(marker, ttl=budget.window):
                continue  # counted by an earlier, interrupted routing run
            key = f"budget:{cat_name}:{user_id}"
            if await self.cache.hit_window(key, limit=budget.limit, window=budget.window, now=now):
                continue
            await self.cache.delete(marker)
            for d in group:
                d.status = DeliveryStatus.SKIPPED
                d.reason = Reason.RATE_LIMITED.value
                d.due_at = now
