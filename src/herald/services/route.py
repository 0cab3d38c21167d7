"""Route: expand a notification into deliveries, one per (recipient, channel).

For each recipient and channel: is the channel enabled, did the user opt out (where the
category allows it), is there a usable address, then render the channel's variant in the
user's locale. Recipients are handled in chunks; each chunk's deliveries are written in one
transaction together with the routing progress, and a delivery's unique key
(notification, user, channel) makes a re-run after a crash insert nothing twice.
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
from herald.domain.errors import HeraldError, TemplateError
from herald.domain.models import (
    JSON,
    Category,
    Delivery,
    DeliveryStatus,
    Device,
    Notification,
    Preferences,
    Priority,
    Reason,
    Recipient,
    Template,
    User,
    new_id,
)
from herald.domain.quiet_hours import next_digest_time, parse_budget, quiet_until
from herald.ports import Cache, Clock, RecipientContext, RoutedBatch, RoutedClaim, Store
from herald.services import render_pool
from herald.services.catalog import Catalog
from herald.services.link_tracking import LinkTracker
from herald.services.rendering import RenderBudgetError, render_variant
from herald.services.signing import UnsubscribeSigner

log = structlog.get_logger("herald.route")

CHUNK = 500
EXPRESS_ROUND = 1000  # express notifications routed together, at most
ROUTE_GATHER = 0.01  # seconds a partial routing pass waits for more normal/low work
ROUTE_SLICE = 50  # normal/low notifications written per routing transaction


def channel_enabled(prefs: Preferences | None, category: Category, channel: str) -> tuple[bool, str]:
    """Whether the user's preferences let ``category`` through on ``channel`` (and why not)."""
    if not category.opt_out or prefs is None:
        return True, ""
    by_cat = prefs.categories.get(category.name, {})
    if channel in by_cat:
        return by_cat[channel], "category"
    if prefs.channels.get(channel) is False:
        return False, "channel"
    return True, ""


# A delivery that ends like this hands a fallback chain over to its next channel.
_UNREACHABLE = frozenset(
    {
        Reason.NO_ADDRESS.value,
        Reason.OPTED_OUT.value,
        Reason.CHANNEL_DISABLED.value,
        Reason.INVALID_ADDRESS.value,
    }
)


def _moves_on(d: Delivery) -> bool:
    if d.status in (DeliveryStatus.FAILED, DeliveryStatus.DEAD):
        return True
    return d.status == DeliveryStatus.SKIPPED and d.reason in _UNREACHABLE


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
        store: Store,
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
        self._over_budget: dict[tuple[str, str, str], RenderBudgetError] = {}
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
            lambda: [self._build(n, template, recipients[n.id], ctx) for n, template in ready]
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
                b.deliveries += await self._fallback_pass(n, template, routed_now)
        for b in batches:
            await self._apply_budgets(b.deliveries)
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
                deliveries=await render_pool.for_routing(self._build, n, template, chunk, ctx),
                recipients_done=done,
                finished=done >= total,
                dedup_key=n.dedup_key,
                dedup_window=self.catalog.dedup_window,
            )
            if batch.finished and n.fallback:
                batch.deliveries += await self._fallback_pass(n, template, {r.user_id for r in chunk})
            await self._apply_budgets(batch.deliveries)
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
                deliveries = await render_pool.for_routing(self._build, n, template, recipients, ctx)
            if finished and n.fallback:
                deliveries += await self._fallback_pass(n, template, set(page))
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
            await self._apply_budgets(batch.deliveries)
            (ok,) = await self._save([batch])
            if not ok or finished:
                return
            cursor = page[-1]

    async def _fallback_pass(
        self, n: Notification, template: Template | None, routed_now: set[str]
    ) -> list[Delivery]:
        """Move each recipient whose delivery failed for good to the next channel of the chain.

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
        ctx = await self._context(recipients, push="push" in (n.channels or []))
        category = self.catalog.category(n.category)
        now = self.clock.now()

        def chains() -> list[Delivery]:
            out: list[Delivery] = []
            for r in recipients:
                out += self._chain(n, template, category, r.user_id, ctx, now, by_user[r.user_id])
            return out

        out = await render_pool.for_routing(chains)
        if out:
            log.info("notification.fallback", notification_id=n.id, deliveries=len(out))
        return out

    def _chain(
        self,
        n: Notification,
        template: Template | None,
        category: Category,
        user_id: str,
        ctx: RecipientContext,
        now: float,
        existing: dict[str, Delivery],
    ) -> list[Delivery]:
        """Walk the fallback chain: the first channel that can take the message gets it; a
        channel without address, opted out or failed for good hands over to the next one."""
        out: list[Delivery] = []
        chain = n.channels or []
        for i, ch in enumerate(chain):
            prev = existing.get(ch)
            if prev is not None:
                if _moves_on(prev):
                    continue
                return out
            d = self._delivery(
                n,
                template,
                category,
                ch,
                user_id,
                ctx.users.get(user_id),
                ctx.preferences.get(user_id),
                ctx.devices.get(user_id, []),
                ctx.suppressed.get(ch, set()),
                now,
            )
            out.append(d)
            if _moves_on(d):
                continue
            if i < len(chain) - 1 and d.status in (DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED):
                d.content.setdefault("_meta", {})["fallback"] = True
            return out
        return out

    async def _apply_budgets(self, deliveries: Sequence[Delivery]) -> None:
        """Enforce per-(user, category) budgets on deliveries about to be queued or scheduled.

        One notification counts once per user whatever its number of channels; all of that
        user's channels share the verdict. Critical priority and categories without a budget
        never consume or are blocked. The count is one atomic ``hit_window`` in the shared cache,
        so concurrent routers cannot overshoot.

        A re-run after a crash (same notification, same user) must not count twice: a marker
        ``budget-hit:{notification}:{user}`` is set first; when it already exists, a previous run
        counted this message and it is let through uncounted (already-saved deliveries are not
        re-inserted anyway). When the window is full the marker is removed again so a re-run
        re-checks instead of letting it through. A crash between the two cache calls can at
        worst count one message without delivering it.
        """
        if self.cache is None:
            return
        groups: dict[tuple[str, str, str], list[Delivery]] = {}
        for d in deliveries:
            if d.status not in (DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED):
                continue
            if d.reason == Reason.DIGEST.value:
                continue  # held for a digest: the user gets one message, not this one
            if d.priority == Priority.CRITICAL:
                continue
            category = self.catalog.categories.get(d.category or "")
            if category is None or not category.budget:
                continue
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
                log.info(
                    "delivery.skipped",
                    delivery_id=d.id,
                    notification_id=notification_id,
                    channel=d.channel,
                    reason=Reason.RATE_LIMITED.value,
                    budget=budget_str,
                )

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

    def _build(
        self,
        n: Notification,
        template: Template | None,
        recipients: Sequence[Recipient],
        ctx: RecipientContext,
    ) -> list[Delivery]:
        category = self.catalog.category(n.category)
        now = self.clock.now()
        channels = n.channels or []
        out: list[Delivery] = []
        for r in recipients:
            if n.fallback:
                out += self._chain(n, template, category, r.user_id, ctx, now, {})
                continue
            user = ctx.users.get(r.user_id)
            prefs = ctx.preferences.get(r.user_id)
            devices = ctx.devices.get(r.user_id, [])
            for ch in channels:
                out.append(
                    self._delivery(
                        n,
                        template,
                        category,
                        ch,
                        r.user_id,
                        user,
                        prefs,
                        devices,
                        ctx.suppressed.get(ch, set()),
                        now,
                    )
                )
        return out

    def _delivery(
        self,
        n: Notification,
        template: Template | None,
        category: Category,
        channel: str,
        user_id: str,
        user: User | None,
        prefs: Preferences | None,
        devices: list[Device],
        suppressed: set[str],
        now: float,
    ) -> Delivery:
        d = Delivery(
            id=new_id("dlv"),
            notification_id=n.id,
            user_id=user_id,
            channel=channel,
            status=DeliveryStatus.PENDING,
            priority=n.priority,
            category=category.name,
            address=None,
            content={},
            due_at=now,
            expires_at=n.expires_at,
        )

        def skip(reason: Reason) -> Delivery:
            d.status = DeliveryStatus.SKIPPED
            d.reason = reason.value
            log.info(
                "delivery.skipped",
                delivery_id=d.id,
                notification_id=n.id,
                channel=channel,
                reason=reason.value,
            )
            return d

        if user is None:
            return skip(Reason.USER_DELETED)
        if channel not in self.catalog.enabled_channels:
            return skip(Reason.CHANNEL_DISABLED)
        allowed, _ = channel_enabled(prefs, category, channel)
        if not allowed:
            return skip(Reason.OPTED_OUT)
        address = address_for(channel, user, devices)
        if not address:
            return skip(Reason.NO_ADDRESS)
        if address in suppressed:
            return skip(Reason.INVALID_ADDRESS)
        d.address = address
        try:
            d.content = self._render(n, template, channel, user)
        except TemplateError as exc:
            d.status = DeliveryStatus.FAILED
            d.reason = Reason.RENDER_ERROR.value
            d.content = {"error": exc.detail}
            log.warning("delivery.render_failed", delivery_id=d.id, notification_id=n.id, error=exc.detail)
            return d
        if channel == "push":
            device = devices[-1]  # the most recently registered active device
            d.content["_meta"] = {
                "device_id": device.id, "device_kind": device.kind, "device_registered_at": device.created_at,
            }
        if channel == "email" and category.opt_out:
            d.content["unsubscribe_url"] = self.unsubscribe.url(user_id, category.name, channel)
        if channel == "email":
            self._track(d, category)
        if n.send_at is not None and n.send_at > now:
            d.status = DeliveryStatus.SCHEDULED
            d.due_at = n.send_at
        else:
            d.status = DeliveryStatus.QUEUED
        digest = prefs.digests.get(category.name) if prefs is not None else None
        if digest and category.digest and n.priority != Priority.CRITICAL:
            # Held for the user's digest (services/digest.py); quiet hours apply to the digest.
            try:
                due = next_digest_time(digest, user.timezone, d.due_at)
            except ValueError:  # validated on write; an unreadable stored value holds nothing
                due = None
            if due is not None:
                d.status = DeliveryStatus.SCHEDULED
                d.reason = Reason.DIGEST.value
                d.due_at = due
                log.info("delivery.held_for_digest", delivery_id=d.id, notification_id=n.id, due=due)
                return d
        quiet = prefs.quiet_hours if prefs is not None else None
        if quiet and category.quiet_hours and n.priority != Priority.CRITICAL:
            # Deferred to the end of the user's quiet hours, never dropped.
            until = quiet_until(quiet, user.timezone, d.due_at)
            if until is not None:
                d.status = DeliveryStatus.SCHEDULED
                d.due_at = until
                log.info("delivery.quiet_hours", delivery_id=d.id, notification_id=n.id, until=until)
        return d

    def _track(self, d: Delivery, category: Category) -> None:
        """Email open and click tracking: the template's email variant decides (``"tracking":
        true/false``), else the category (``tracking``; by default on where users may opt out,
        off for ``security`` and ``transactional``)."""
        wanted = d.content.pop("tracking", None)
        if not isinstance(wanted, bool):
            wanted = category.tracking if category.tracking is not None else category.opt_out
        html = d.content.get("html")
        if not wanted or self.tracking is None or not isinstance(html, str) or not html.strip():
            return
        keep = {str(d.content["unsubscribe_url"])} if d.content.get("unsubscribe_url") else set()
        done = self.tracking.rewrite(d.id, html, keep=keep)
        d.content["html"] = done.html
        d.content["_track"] = {"links": done.links}

    def _render(self, n: Notification, template: Template | None, channel: str, user: User) -> JSON:
        locale = user.locale or self.catalog.default_locale
        if template is not None:
            variant = template.variant(channel, locale)
            if variant is None:
                raise TemplateError(f"template {template.name!r} has no {channel} variant")
        else:
            variant = (n.content or {}).get(channel)
            if variant is None:
                raise TemplateError(f"no {channel} content")
        context = {
            "data": n.data,
            "user": user.template_view(),
            "notification": {"id": n.id, "category": n.category, "priority": n.priority.value},
        }
        # A template over its budget for one recipient fails the notification's other
        # recipients on that channel at once: a thousand of them must not cost a thousand
        # time budgets of the routing thread.
        key = (n.id, channel, locale)
        over = self._over_budget.get(key)
        if over is not None:
            raise RenderBudgetError(over.detail, limit=over.limit)
        try:
            return render_variant(variant, context)
        except RenderBudgetError as exc:
            if len(self._over_budget) > 1024:
                self._over_budget.clear()
            self._over_budget[key] = exc
            raise
