"""Route: expand a notification into deliveries, one per (recipient, channel).

Who hears what is the domain's rule (:mod:`herald.domain.audience`): for each recipient and
channel it says deliver, skip with a reason, or hold (quiet hours, digest); what goes out is
rendered in the user's locale (:mod:`herald.services.route_build`), counted against the
category's budget (:mod:`herald.services.route_budget`), and a fallback chain moves on when a
channel cannot be reached or failed for good (:mod:`herald.services.route_fallback`).

Recipients are handled in chunks; each chunk's deliveries are written in one transaction
together with the routing progress, and a delivery's unique key (notification, user, channel)
makes a re-run after a crash insert nothing twice. Each skipped delivery is told once
(``delivery.skipped``, with its reason) after its write committed, duplicates included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from herald.domain import urgency
from herald.domain.addresses import address_for
from herald.domain.audience import SKIPPED_EVENT, channel_enabled, skipped_fields
from herald.domain.errors import HeraldError
from herald.domain.models import (
    Delivery,
    DeliveryStatus,
    Notification,
    Recipient,
    Template,
    new_id,
)
from herald.ports import Cache, Clock, RecipientContext, RoutedBatch, RoutedClaim, RouterServiceStore
from herald.services import render_pool
from herald.services.catalog import Catalog
from herald.services.link_tracking import LinkTracker
from herald.services.route_budget import Budgets
from herald.services.route_build import DeliveryBuilder
from herald.services.route_fallback import FallbackPass
from herald.services.signing import UnsubscribeSigner

log = structlog.get_logger("herald.route")

CHUNK = 500
EXPRESS_ROUND = 1000  # express notifications routed together, at most
ROUTE_GATHER = 0.01  # seconds a partial routing pass waits for more normal/low work
ROUTE_SLICE = 50  # normal/low notifications written per routing transaction


class LocalSenders(Protocol):
    """The senders of the routing process (:class:`herald.services.deliver.DeliveryService`)."""

    def routed_claim(self, deliveries: Sequence[Delivery]) -> RoutedClaim | None:
        """Which of these deliveries, about to be written queued, it takes at once, if any."""
        ...

    def start_claimed(self, deliveries: Sequence[Delivery]) -> None:
        """Send deliveries committed claimed as :meth:`routed_claim` asked."""
        ...


class _TemplateGone(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class RouterService:
    def __init__(
        self,
        store: RouterServiceStore,
        clock: Clock,
        catalog: Catalog,
        wake_channel: Callable[[str, int], None],  # Queue.wake(channel, top_rank)
        unsubscribe: UnsubscribeSigner,
        *,
        batch: int = 50,
        lease: float = 60.0,
        cache: Cache | None = None,
        hand_over: Callable[[Sequence[Delivery]], None] | None = None,
        senders: LocalSenders | None = None,
        tracking: LinkTracker | None = None,
    ) -> None:
        self.store = store
        self.tracking = tracking  # email open and click tracking (services/link_tracking.py)
        self._hand_over = hand_over  # Queue.hand_over: critical/high straight to local senders
        self._senders = senders  # this process's DeliveryService: takes some as they are written
        self.cache = cache
        self.clock = clock
        self.catalog = catalog
        self._wake_channel = wake_channel
        self.unsubscribe = unsubscribe
        self.batch = batch
        self.lease = lease
        self.owner = f"router-{os.getpid()}-{new_id('r')[-8:]}"
        self._signal = asyncio.Event()
        self._urgent = asyncio.Event()
        self._nested = False  # a pass run between two slices of another (see route_pending)
        self._templates: dict[tuple[str, int | None], Template] = {}
        self.builder = DeliveryBuilder(catalog, clock, unsubscribe, tracking)
        self._budgets = Budgets(cache, catalog, clock)
        self._fallback = FallbackPass(store, self.builder, lambda rs, push: self._context(rs, push=push))
        self._express: set[asyncio.Task[None]] = set()
        self._express_pending: dict[int, list[Notification]] = {}  # by lane: waiting to be routed
        self._express_lanes: dict[int, asyncio.Task[None]] = {}  # by lane: the task routing them
        # New notifications of higher lanes are left to other routers (bootstrap.start_roles:
        # a worker of the bulk lanes only, whose niced, busy process would route a critical
        # one late and could not send it itself).
        self.min_rank = 0

    def wake(self, urgent: bool = True) -> None:
        """New work. ``urgent=False`` (no critical among it) may wait for company, see run."""
        self._signal.set()
        if urgent:
            self._urgent.set()

    # Express routing (AcceptService.express) -----------------------------------------------------
    def takes(self, n: Notification) -> bool:
        """Whether an accepted notification is routed at once by :meth:`route_now`: critical or
        high, a short list of stored users (inline recipients and topics go the usual way)."""
        return (
            n.priority.rank <= 1
            and n.topic is None
            and 0 < len(n.recipients) <= CHUNK
            and all(r.inline is None for r in n.recipients)
        )

    def route_now(self, notes: Sequence[Notification]) -> None:
        """Route notifications committed already leased to this router, now: no claim
        transaction, no wait for the loop to wake. Should this process die first, their routing
        leases run out and any router takes them over.

        One task per lane (critical, high) routes whatever has come meanwhile together, as
        the API's group commit does for accepts: one notification at a time was two
        transactions each (the recipients' read, the routed write), and at 500 single sends a
        second the serve process spent its core on them (accept p99 of seconds)."""
        for n in notes:
            self._express_pending.setdefault(n.priority.rank, []).append(n)
        for rank, waiting in list(self._express_pending.items()):
            if waiting and rank not in self._express_lanes:
                task = asyncio.create_task(self._express_lane(rank), name="herald-route-express")
                self._express_lanes[rank] = task
                self._express.add(task)
                task.add_done_callback(self._express.discard)

    async def _express_lane(self, rank: int) -> None:
        try:
            while pending := self._express_pending.get(rank):
                # At most one batch request's worth in one transaction.
                notes, self._express_pending[rank] = pending[:EXPRESS_ROUND], pending[EXPRESS_ROUND:]
                await self._route_express(notes)  # catches everything: the loop goes on
        finally:
            self._express_lanes.pop(rank, None)  # cancelled: what is left, its leases hand over

    async def _route_express(self, notes: list[Notification]) -> None:
        until = self.clock.now() + self.lease / 2
        while True:
            try:
                with urgency.urgent():
                    await self._route_together(notes)
                return
            except HeraldError as exc:  # the lease is ours: try again while it lasts
                if self.clock.now() >= until:
                    log.warning("route.express_given_up", error=exc.detail, notifications=len(notes))
                    return
                log.warning("route.backend_error", error=exc.detail)
                await asyncio.sleep(0.5)
            except Exception:  # a bug: the leases run out and the usual pass takes them over
                log.exception("route.express_crashed", notifications=len(notes))
                return

    async def run(self, stopping: asyncio.Event, idle: float = 1.0) -> None:
        try:
            await self._run(stopping, idle)
        finally:
            if self._express:  # routing handed over before the stop finishes
                await asyncio.wait(list(self._express), timeout=5.0)

    async def _run(self, stopping: asyncio.Event, idle: float) -> None:
        while not stopping.is_set():
            try:
                routed = await self.route_pending()
            except HeraldError as exc:
                log.warning("route.backend_error", error=exc.detail)
                routed = 0
            if routed >= self.batch:
                continue  # there is more right now
            if routed:
                # A partial pass under steady load: let the next few ms of arrivals join the
                # next pass (each pass is three transactions whatever its size). A critical
                # accept wakes it at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), ROUTE_GATHER)
                self._urgent.clear()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), idle)
            self._signal.clear()

    async def _between_slices(self) -> None:
        """Long routing work (a pass of normal/low notifications, a big recipient list, a topic
        fan-out) is written in slices; a critical notification accepted meanwhile is claimed and
        routed between two slices, not after the whole of it."""
        if self._urgent.is_set() and not self._nested:
            self._urgent.clear()
            self._nested = True
            try:
                await self.route_pending()
            finally:
                self._nested = False

    async def route_pending(self) -> int:
        with urgency.urgent():  # short, and critical notifications come first in it
            claimed = await self.store.claim_unrouted(
                owner=self.owner,
                limit=self.batch,
                lease=self.lease,
                now=self.clock.now(),
                **({"min_rank": self.min_rank} if self.min_rank else {}),
            )
        listed = [n for n in claimed if n.topic is None]
        small = [n for n in listed if len(n.recipients) - n.recipients_routed <= CHUNK]
        # Critical and high first, and ahead of batch work on the database (domain/urgency.py):
        # a critical notification must not wait for the low ones claimed with it.
        first = [n for n in small if n.priority.rank <= 1]
        if first:
            with urgency.urgent():
                await self._route_together(first)
        small = [n for n in small if n.priority.rank > 1]
        for i in range(0, len(small), ROUTE_SLICE):
            # A pass of normal/low work is written in slices; a critical notification accepted
            # meanwhile is claimed and routed between two slices, not after the whole pass.
            await self._between_slices()
            await self._route_together(small[i : i + ROUTE_SLICE])
        for n in listed:
            if len(n.recipients) - n.recipients_routed > CHUNK:
                await self.route(n)
        for n in claimed:
            if n.topic is not None:
                await self.route_topic(n)
        return len(claimed)

    async def _template(self, n: Notification) -> Template | None:
        """The notification's template version (cached: versions never change), or None if gone."""
        if n.template is None:
            return None
        key = (n.template, n.template_version)
        cached = self._templates.get(key)
        if cached is None:
            cached = await self.store.get_template(n.template, n.template_version)
            if cached is None:
                raise _TemplateGone(n.template)
            if len(self._templates) > 512:
                self._templates.clear()
            self._templates[key] = cached
        return cached

    async def _route_together(self, notes: Sequence[Notification]) -> None:
        """Route many small notifications with one read and one write transaction."""
        ready: list[tuple[Notification, Template | None]] = []
        for n in notes:
            try:
                ready.append((n, await self._template(n)))
            except _TemplateGone as gone:
                await self.store.fail_routing(
                    n.id, f"template {gone.name!r} no longer exists", now=self.clock.now()
                )
        if not ready:
            return
        recipients = {n.id: n.recipients[n.recipients_routed :] for n, _ in ready}
        ctx = await self._context(
            [r for rs in recipients.values() for r in rs],
            push=any("push" in (n.channels or []) for n, _ in ready),
        )
        # Rendering runs on the routing thread (render_pool), never on the loop: one hop.
        built = await render_pool.for_routing(
            lambda: [self.builder.build(n, template, recipients[n.id], ctx) for n, template in ready]
        )
        batches = [
            RoutedBatch(
                notification_id=n.id,
                deliveries=deliveries,
                recipients_done=len(n.recipients),
                finished=True,
                dedup_key=n.dedup_key,
                dedup_window=self.catalog.dedup_window,
            )
            for (n, _), deliveries in zip(ready, built, strict=True)
        ]
        for (n, template), b in zip(ready, batches, strict=True):
            if n.fallback:
                routed_now = {r.user_id for r in recipients[n.id]}
                b.deliveries += await self._fallback(n, template, routed_now)
        for b in batches:
            await self._budgets.apply(b.deliveries)
        await self._save(batches)

    async def _save(self, batches: Sequence[RoutedBatch]) -> list[bool]:
        """Write routed batches in one transaction; critical/high deliveries that this
        process's own senders can take now are written already claimed by them and sent at
        once (:meth:`DeliveryService.routed_claim`)."""
        claim = None
        if self._senders is not None:
            urgent = [
                d
                for b in batches
                for d in b.deliveries
                if d.priority.rank <= 1 and d.status == DeliveryStatus.QUEUED
            ]
            claim = self._senders.routed_claim(urgent) if urgent else None
        oks = await self.store.save_routed_many(
            batches, owner=self.owner, now=self.clock.now(), lease=self.lease, claim=claim
        )
        self._after_save(batches, oks)
        return oks

    def _after_save(self, batches: Sequence[RoutedBatch], oks: Sequence[bool]) -> None:
        channels: dict[str, int] = {}  # channel -> the highest lane queued in it
        urgent: list[Delivery] = []
        claimed: list[Delivery] = []
        for batch, ok in zip(batches, oks, strict=True):
            if not ok:
                log.info("notification.routing_lease_lost", notification_id=batch.notification_id)
                continue
            for d in batch.deliveries:
                if d.status == DeliveryStatus.SKIPPED:  # decided here, or a duplicate (the write)
                    fields = skipped_fields(
                        d.id, d.reason or "", notification_id=d.notification_id, channel=d.channel
                    )
                    log.info(SKIPPED_EVENT, **fields)
            claimed += [d for d in batch.deliveries if d.status == DeliveryStatus.SENDING]
            queued = [d for d in batch.deliveries if d.status == DeliveryStatus.QUEUED]
            for d in queued:
                channels[d.channel] = min(channels.get(d.channel, 3), d.priority.rank)
            urgent += [d for d in queued if d.priority.rank <= 1]
            if batch.finished:
                log.info(
                    "notification.routed",
                    notification_id=batch.notification_id,
                    deliveries=len(batch.deliveries),
                )
        if claimed and self._senders is not None:
            self._senders.start_claimed(claimed)
        if urgent and self._hand_over is not None:
            self._hand_over(urgent)
        for ch, top in channels.items():
            self._wake_channel(ch, top)

    async def route(self, n: Notification) -> None:
        """Route one notification chunk by chunk, resuming where a previous router stopped."""
        try:
            template = await self._template(n)
        except _TemplateGone as gone:
            await self.store.fail_routing(
                n.id, f"template {gone.name!r} no longer exists", now=self.clock.now()
            )
            return
        total = len(n.recipients)
        for offset in range(n.recipients_routed, total, CHUNK):
            await self._between_slices()
            chunk = n.recipients[offset : offset + CHUNK]
            ctx = await self._context(chunk, push="push" in (n.channels or []))
            done = min(offset + CHUNK, total)
            batch = RoutedBatch(
                notification_id=n.id,
                deliveries=await render_pool.for_routing(self.builder.build, n, template, chunk, ctx),
                recipients_done=done,
                finished=done >= total,
                dedup_key=n.dedup_key,
                dedup_window=self.catalog.dedup_window,
            )
            if batch.finished and n.fallback:
                batch.deliveries += await self._fallback(n, template, {r.user_id for r in chunk})
            await self._budgets.apply(batch.deliveries)
            (ok,) = await self._save([batch])
            if not ok:
                return

    async def route_topic(self, n: Notification) -> None:
        """Fan a topic notification out, one page of subscribers per transaction.

        Subscribers are walked in user id order; each chunk's deliveries are written together
        with the last subscriber routed (``route_cursor``) and the progress counters, so memory
        holds one page at a time and a router that takes over after a crash resumes at the
        cursor: nobody skipped, nobody twice (the delivery key would refuse a double anyway).
        """
        assert n.topic is not None
        try:
            template = await self._template(n)
        except _TemplateGone as gone:
            await self.store.fail_routing(
                n.id, f"template {gone.name!r} no longer exists", now=self.clock.now()
            )
            return
        total = n.recipients_total
        if n.route_cursor is None and n.recipients_routed == 0:
            total = await self.store.count_subscribers(n.topic)
        cursor, routed = n.route_cursor, n.recipients_routed
        push = "push" in (n.channels or [])
        while True:
            await self._between_slices()
            page = await self.store.subscriber_page(n.topic, after=cursor, limit=CHUNK)
            finished = len(page) < CHUNK
            recipients = [Recipient(user_id=u) for u in page]
            deliveries: list[Delivery] = []
            if recipients:
                ctx = await self._context(recipients, push=push)
                deliveries = await render_pool.for_routing(self.builder.build, n, template, recipients, ctx)
            if finished and n.fallback:
                deliveries += await self._fallback(n, template, set(page))
            routed += len(page)
            batch = RoutedBatch(
                notification_id=n.id,
                deliveries=deliveries,
                recipients_done=routed,
                finished=finished,
                recipients_total=routed if finished else max(total, routed),
                cursor=page[-1] if page else None,
                dedup_key=n.dedup_key,
                dedup_window=self.catalog.dedup_window,
            )
            await self._budgets.apply(batch.deliveries)
            (ok,) = await self._save([batch])
            if not ok or finished:
                return
            cursor = page[-1]

    async def _context(self, recipients: Sequence[Recipient], *, push: bool) -> RecipientContext:
        stored = [r.user_id for r in recipients if r.inline is None]
        ctx = await self.store.recipient_context(stored, with_devices=push)
        inline = [r.inline for r in recipients if r.inline is not None]
        for user in inline:
            ctx.users[user.id] = user
        # Stored users' suppressions come with the context; inline addresses are checked here.
        for ch in ("email", "sms", "webhook"):
            addrs = [a for u in inline if (a := address_for(ch, u, ())) is not None]
            if addrs:
                ctx.suppressed.setdefault(ch, set()).update(await self.store.suppressed(ch, addrs))
        return ctx


# Importable from here as before: the rule itself lives in the domain.
__all__ = ["CHUNK", "LocalSenders", "RouterService", "address_for", "channel_enabled"]
