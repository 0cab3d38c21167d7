"""The operator console's use cases: what the pages show and the few things they change.

Pages (``entrypoints/web/console``) call this service only. Reads go through the console's
read model (:class:`herald.ports_console.ConsoleReads`); replay, cancel, templates and rules go
through the services the API calls (dead letters, notifications, the routing catalog), with
the same checks and the same wake-ups.

The overview's week of counts comes from hourly buckets kept in memory (:class:`Rollup`): a
bucket is counted from one primary-key range (ids are time-ordered), and counted again only
when it is stale for its age, so a refresh every few seconds re-reads the current hour and a
few old buckets, never the whole week (bench/console_pages.py measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from herald.domain.audience import Source, channel_choice
from herald.domain.errors import NotFound, ValidationError
from herald.domain.models import ALL_CHANNELS, Delivery, Notification, Priority, Template
from herald.domain.rules import Rule
from herald.ports import Clock, ConsoleReads, ConsoleServiceStore, Queue, SearchQuery
from herald.services.catalog import Catalog
from herald.services.dead_letters import DeadLetterService
from herald.services.lookups import Lookups
from herald.services.notifications import NotificationService
from herald.services.routing_catalog import RoutingCatalog

HOUR = 3600.0
WINDOWS = {"hour": (HOUR, 300.0), "day": (24 * HOUR, HOUR), "week": (7 * 24 * HOUR, 6 * HOUR)}
MAX_REPLAY = 10_000  # one "replay all matching" at most; the confirmation names the count
_CHANNELS = {c.value for c in ALL_CHANNELS}
_SOURCES = {  # why a channel is on or off for a category (effective_preferences)
    Source.REQUIRED: "category cannot be opted out of",
    Source.CATEGORY: "user: this category on this channel",
    Source.CHANNEL: "user: whole channel {}",
    Source.DEFAULT: "default",
}
STATUS_GROUPS = {
    "delivered": ("sent", "delivered", "read"),
    "in_flight": ("pending", "scheduled", "queued", "sending", "retrying"),
    "failed": ("failed", "dead"),
    "skipped": ("skipped", "cancelled"),
}
_GROUP_OF = {s: g for g, members in STATUS_GROUPS.items() for s in members}


@dataclass(slots=True)
class _Bucket:
    counts: list[Any]
    computed_at: float


@dataclass(slots=True)
class Rollup:
    """Hourly counts per (channel, status) by creation hour, counted lazily and kept.

    A finished hour is counted again once it is older than a tenth of its age (at least a
    minute): statuses still move (retries, callbacks), more so in recent hours. A request
    counts for at most ``budget`` seconds, newest hours first; hours it could not count (a
    process's first look at a big week) are counted in the background and shown as pending,
    and stale ones are shown as last counted meanwhile.
    """

    reads: ConsoleReads
    budget: float = 0.25
    buckets: dict[float, _Bucket] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recounted: int = 0  # buckets counted since start (the benchmark reports it)
    background: asyncio.Task[None] | None = None

    def _stale(self, start: float, now: float) -> bool:
        b = self.buckets.get(start)
        if b is None:
            return True
        end = start + HOUR
        if end > b.computed_at:  # counted while the hour was still running
            return now - b.computed_at > min(15.0, max(1.0, end - b.computed_at))
        return now - b.computed_at > max(60.0, (now - end) / 10)

    async def _count(self, starts: list[float], now: float) -> None:
        counted = await self.reads.bucket_counts([(s, s + HOUR) for s in starts])
        for s, counts in zip(starts, counted, strict=True):
            self.buckets[s] = _Bucket(counts, now)
        self.recounted += len(starts)

    async def _finish(self, starts: list[float], now: float) -> None:
        # Four hours per database call and per hold of the lock: requests and the senders'
        # own database work go between them.
        for i in range(0, len(starts), 4):
            async with self.lock:
                await self._count([s for s in starts[i : i + 4] if self._stale(s, now)], now)

    async def hours(self, first: float, last: float, now: float) -> dict[float, list[Any] | None]:
        """Counts per hour from ``first`` to ``last``; None for an hour still being counted."""
        starts = [first + i * HOUR for i in range(int((last - first) // HOUR) + 1)]
        async with self.lock:
            stale = sorted((s for s in starts if self._stale(s, now)), reverse=True)
            began = time.monotonic()
            # The newest hours at least, whatever the budget: what the operator looks at first.
            while stale and (len(self.buckets) == 0 or time.monotonic() - began < self.budget):
                part, stale = stale[:4], stale[4:]
                await self._count(part, now)
            if stale and (self.background is None or self.background.done()):
                self.background = asyncio.create_task(self._finish(stale, now), name="console-rollup")
            # Only what no window shows any more (the day and week views share the buckets).
            for s in [s for s in self.buckets if s < now - WINDOWS["week"][0] - 2 * HOUR]:
                del self.buckets[s]
            return {s: (b.counts if (b := self.buckets.get(s)) is not None else None) for s in starts}

    async def close(self) -> None:
        if self.background is not None and not self.background.done():
            self.background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.background


@dataclass(slots=True)
class Series:
    """Counts per time slot: ``slots`` start times, ``by_group[group][i]``, ``by_channel``."""

    window: str
    slot_seconds: float
    slots: list[float]
    by_group: dict[str, list[int]]
    by_channel: dict[str, dict[str, int]]  # channel -> status -> count (whole window)
    by_status: dict[str, int]
    funnel: dict[str, int]
    pending_hours: int = 0  # hours of the window still being counted (shown as such)


def _series(window: str, slot_seconds: float, slots: list[float], per_slot: list[list[Any]]) -> Series:
    by_group = {g: [0] * len(slots) for g in STATUS_GROUPS}
    by_channel: dict[str, dict[str, int]] = {}
    by_status: dict[str, int] = {}
    funnel = {"created": 0, "sent": 0, "delivered": 0, "read": 0}
    for i, counts in enumerate(per_slot):
        for bc in counts:
            by_group[_GROUP_OF.get(bc.status, "in_flight")][i] += bc.count
            per = by_channel.setdefault(bc.channel, {})
            per[bc.status] = per.get(bc.status, 0) + bc.count
            by_status[bc.status] = by_status.get(bc.status, 0) + bc.count
            funnel["created"] += bc.count
            funnel["sent"] += bc.sent
            funnel["delivered"] += bc.delivered
            funnel["read"] += bc.read
    return Series(window, slot_seconds, slots, by_group, by_channel, by_status, funnel)


@dataclass(slots=True)
class DeadLetter:
    delivery: Delivery
    template: str | None
    last_error: str | None


class ConsoleService:
    def __init__(
        self,
        store: ConsoleServiceStore,
        reads: ConsoleReads,
        queue: Queue,
        clock: Clock,
        catalog: Catalog,
        lookups: Lookups,
        *,
        provider_health: Any = None,
        forget_rule: Any = None,
    ) -> None:
        self.store = store
        self.reads = reads
        self.queue = queue
        self.clock = clock
        self.catalog = catalog
        self.lookups = lookups
        self.rollup = Rollup(reads)
        self._provider_health = provider_health  # () -> list of dicts (bootstrap wires it)
        # The API's services: one set of checks and wake-ups whichever face changes something.
        self.replays = DeadLetterService(store, queue, clock)
        self.notifications = NotificationService(store, clock)
        # forget_rule: (event_type) -> None, the event service's rule cache
        self.routing = RoutingCatalog(store, clock, catalog, lookups, forget_rule=forget_rule)

    # Overview ----------------------------------------------------------------------------------
    async def series(self, window: str) -> Series:
        if window not in WINDOWS:
            raise ValidationError(f"window must be one of {', '.join(WINDOWS)}", field="window")
        span, slot = WINDOWS[window]
        now = self.clock.now()
        if window == "hour":
            # Five-minute slots of the last hour, counted live: one hour's rows at most.
            first = (now // slot) * slot - span + slot
            slots = [first + i * slot for i in range(int(span // slot))]
            counted = await self.reads.bucket_counts([(s, s + slot) for s in slots])
            return _series(window, slot, slots, counted)
        this_hour = (now // HOUR) * HOUR
        first_hour = this_hour - span + HOUR
        hours = await self.rollup.hours(first_hour, this_hour, now)
        per = int(slot // HOUR)
        slots = [first_hour + i * slot for i in range(int(span // slot))]
        grouped = [[bc for h in range(per) for bc in (hours.get(s + h * HOUR) or [])] for s in slots]
        series = _series(window, slot, slots, grouped)
        series.pending_hours = sum(1 for v in hours.values() if v is None)
        return series

    async def close(self) -> None:
        await self.rollup.close()

    async def overview(self, window: str) -> dict[str, Any]:
        # Independent reads: side by side on PostgreSQL's pool (SQLite runs them in turn).
        series, queued, dead, failed, ambiguous = await asyncio.gather(
            self.series(window),
            self.reads.queue_depth(sorted(self.catalog.enabled_channels)),
            self.reads.status_total("dead"),
            self.reads.status_total("failed"),
            self.reads.ambiguous_total(),
        )
        depth: dict[str, dict[str, int]] = {}
        for channel, rank, count in queued:
            depth.setdefault(channel, {})[Priority.from_rank(rank).value] = count
        return {
            "series": series,
            "queue_depth": depth,
            "dead_letters": dead,
            "failed": failed,
            "ambiguous": ambiguous,
            "providers": self._provider_health() if self._provider_health else [],
            "generated_at": self.clock.now(),
        }

    # Notifications -----------------------------------------------------------------------------
    async def search(self, qry: SearchQuery) -> list[tuple[Delivery, str | None]]:
        if qry.status is not None and qry.status not in _STATUSES:
            raise ValidationError(f"unknown status {qry.status!r}", field="status")
        return await self.reads.search(qry)

    async def notification(
        self, notification_id: str, *, after: str | None = None, limit: int = 200
    ) -> tuple[Notification, list[Delivery], dict[str, int], str | None]:
        """The notification, a page of its deliveries with their attempts, counts per status,
        and where the next page starts."""
        found = await self.notifications.page(notification_id, after=after, limit=limit, counted=True)
        if found is None:
            raise NotFound(f"notification {notification_id} does not exist")
        return found.notification, found.deliveries, found.counts or {}, found.next_cursor

    async def cancel(self, notification_id: str) -> tuple[int, int]:
        """(deliveries cancelled, deliveries already sent or finished)."""
        done = await self.notifications.cancel(notification_id)
        return done.cancelled, done.unchanged

    # Dead letters ------------------------------------------------------------------------------
    async def dead_letters(self, qry: SearchQuery) -> list[DeadLetter]:
        qry.status = "dead"
        found = await self.reads.search(qry)
        last = await self.reads.attempts([d.id for d, _ in found], last_only=True)
        out = []
        for d, template in found:
            attempts = last.get(d.id)
            attempt = attempts[-1] if attempts else None
            error = None
            if attempt is not None:
                error = " ".join(x for x in (attempt.outcome.value, attempt.code, attempt.detail) if x)
            out.append(DeadLetter(d, template, error or d.reason))
        return out

    async def count_dead(self, qry: SearchQuery) -> int:
        qry.status = "dead"
        return await self.reads.count_matching(qry, cap=MAX_REPLAY)

    async def replay(self, delivery_ids: Iterable[str]) -> list[Delivery]:
        """Replay these dead deliveries (the others are left alone) and wake their senders."""
        return await self.replays.replay(list(dict.fromkeys(delivery_ids))[:MAX_REPLAY])

    async def replay_one(self, delivery_id: str) -> Delivery:
        return await self.replays.replay_one(delivery_id)

    async def replay_matching(self, qry: SearchQuery) -> list[Delivery]:
        qry.status = "dead"
        ids = await self.reads.matching_ids(qry, cap=MAX_REPLAY)
        return await self.replay(ids)

    # Templates ---------------------------------------------------------------------------------
    async def templates(self) -> list[dict[str, Any]]:
        return await self.reads.templates()

    async def template(self, name: str, version: int | None = None) -> Template | None:
        return await self.routing.template(name, version)

    async def template_versions(self, name: str) -> list[tuple[int, float, bool]]:
        return await self.reads.template_versions(name)

    async def save_template(self, template: Template) -> Template:
        """The API's checks (services/routing_catalog.py), then a new version stored."""
        return await self.routing.save_template(template)

    async def preview(
        self, template: Template, *, data: dict[str, Any], user_id: str | None, locale: str | None
    ) -> dict[str, dict[str, Any]]:
        """Render every channel of ``template`` (saved or not) in the sandbox, as a send would
        (off the event loop, within the render budget: render_pool)."""
        return await self.routing.preview(template, data=data, user_id=user_id, locale=locale)

    # Users -------------------------------------------------------------------------------------
    async def user(self, user_id: str) -> dict[str, Any]:
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} does not exist")
        prefs = await self.store.get_preferences(user_id)
        addresses = [(ch, a) for ch, a in (("email", user.email), ("sms", user.phone)) if a]
        if user.webhook_url:
            addresses.append(("webhook", user.webhook_url))
        inbox, unread = await self.store.list_inbox(user_id, unread_only=False, cursor=None, limit=20)
        recent = await self.reads.search(SearchQuery(user_id=user_id, limit=30))
        return {
            "user": user,
            "devices": await self.reads.devices(user_id),
            "preferences": self.effective_preferences(prefs),
            "quiet_hours": prefs.quiet_hours if prefs else None,
            "digests": prefs.digests if prefs else {},
            "suppressed": await self.reads.suppressions(addresses),
            "inbox": inbox,
            "unread": unread,
            "recent": recent,
        }

    def effective_preferences(self, prefs: Any) -> list[dict[str, Any]]:
        """Per category and channel: on or off, and why (the router's rule, audience.channel_choice)."""
        rows = []
        channels = sorted(self.catalog.enabled_channels)
        for name, cat in sorted(self.catalog.categories.items()):
            for ch in channels:
                choice = channel_choice(prefs, cat, ch)
                on, source = choice.enabled, _SOURCES[choice.source].format("on" if choice.enabled else "off")
                rows.append({"category": name, "channel": ch, "enabled": on, "source": source})
        return rows

    # Rules and topics --------------------------------------------------------------------------
    async def rules(self) -> list[Rule]:
        return await self.routing.rules()

    async def rule(self, event_type: str) -> Rule | None:
        return await self.routing.rule(event_type)

    async def save_rule(self, event_type: str, body: Any) -> Rule:
        """The API's checks (services/routing_catalog.py), then store it and drop cached copies."""
        return await self.routing.save_rule(event_type, body)

    async def topics(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await self.reads.topics(), await self.reads.broadcasts()


_STATUSES = {
    "pending",
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "read",
    "retrying",
    "failed",
    "dead",
    "skipped",
    "cancelled",
}


def provider_health(pools: dict[str, Any], unhealthy: dict[str, dict[str, object]]) -> list[dict[str, Any]]:
    """Each channel's providers with their circuit state (closed, open, half_open) and any
    configuration error the senders of this process saw (``DeliveryService.unhealthy``)."""
    out: list[dict[str, Any]] = []

    def walk(channel: str, p: Any, breakers: dict[str, Any]) -> None:
        inner = list(getattr(p, "providers", []) or [])
        by_kind = getattr(p, "by_kind", None)
        if isinstance(by_kind, dict):
            inner += list(by_kind.values())
        fallback = getattr(p, "fallback", None)
        if fallback is not None:
            inner.append(fallback)
        own = getattr(p, "breakers", None)
        if inner:
            for q in inner:
                walk(channel, q, own if isinstance(own, dict) else breakers)
            return
        name = str(getattr(p, "name", "?"))
        breaker = breakers.get(name)
        problem = unhealthy.get(name)
        out.append(
            {
                "channel": channel,
                "provider": name,
                "circuit": breaker.state if breaker is not None else "none",
                "failures": breaker.failures if breaker is not None else 0,
                "problem": problem.get("detail") if problem else None,
            }
        )

    for channel, pool in sorted(pools.items()):
        for p in pool.providers:
            walk(channel, p, {})
    return out
