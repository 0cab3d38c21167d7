"""Deliver: per-channel worker pools that claim, send, classify and record.

Each channel has a pool of ``concurrency`` send slots. Claims take only as many deliveries as
there are free slots, so everything claimed is in flight at once and a crash leaves at most
``concurrency`` ambiguous sends per channel. ``reserved_high`` slots are kept for the
critical and high lanes: a flood of normal/low traffic can fill the rest, never those.
A pool may serve some lanes only (``min_rank``..``max_rank``): the critical and high lanes in
one process, the bulk in others, so that a critical send never waits for a busy bulk sender's
event loop or CPU.

Outcomes go through :class:`ResultWriter`, which commits them in batches (group commit): one
transaction per batch of finished sends instead of one per send.

**Provider batches** (issue 23). When the channel's provider sends one content to many
recipients in one call (:class:`herald.ports.BatchProvider`: SendGrid's personalizations),
deliveries of one notification claimed together whose messages have the same ``batch_key``
(a broadcast with no per-user fields) go out as one call, and count as one send slot. Each
delivery keeps its own attempt, status and receipt, recorded as if sent alone; the guarantees
are the same (claimed under a lease, results through the writer). While a claim keeps finding
such groups, the next claim takes up to the provider's batch limit (SendGrid: 1,000), so a
broadcast moves at one provider call per thousand recipients; the sends a crash can leave
ambiguous are then up to that many.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from herald.domain import audience, urgency
from herald.domain.audience import SKIPPED_EVENT, skipped_fields
from herald.domain.errors import DeliveryError, HeraldError
from herald.domain.models import (
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    OutboundMessage,
    new_id,
)
from herald.ports import BatchProvider, Clock, Provider, Queue, ResultsStore, RoutedClaim
from herald.services.catalog import Catalog
from herald.services.deliver_batches import MAX_BATCH_CLAIM, batcher, groups
from herald.services.deliver_results import DeliveryObserver, Outcomes, ResultWriter, classify

log = structlog.get_logger("herald.deliver")

S = DeliveryStatus


@dataclass(slots=True)
class ChannelPool:
    channel: str
    providers: Sequence[Provider]
    concurrency: int
    reserved_high: int
    min_rank: int = 0  # the lanes this pool sends: ranks min_rank..max_rank
    max_rank: int = 3
    in_flight: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    high_in_flight: int = 0
    batched: int = 0  # deliveries in flight beyond the first of each provider batch
    batching: bool = False  # the last claim found deliveries to batch: claim a batch's worth

    def busy(self) -> int:
        """Send slots in use: a provider batch is one."""
        return len(self.in_flight) - self.batched


class DeliveryService:
    def __init__(
        self,
        store: ResultsStore,
        queue: Queue,
        clock: Clock,
        catalog: Catalog,
        pools: Mapping[str, ChannelPool],
        *,
        lease: float = 30.0,
        idle_wait: float = 1.0,
        send_timeout: float = 60.0,
        observer: DeliveryObserver | None = None,
        claim_batch: int = 64,
    ) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock
        self.catalog = catalog
        self.pools = dict(pools)
        self.lease = lease
        self.idle_wait = idle_wait
        self.send_timeout = send_timeout
        self.claim_batch = claim_batch  # the most deliveries one claim takes (queue.claim_batch)
        self.owner = f"worker-{os.getpid()}-{new_id('w')[-8:]}"
        self.observer = observer or DeliveryObserver()
        self.writer = ResultWriter(store, clock, self._recorded)
        self.outcomes = Outcomes(self.owner, clock, catalog, self.observer)
        # Providers whose last outcome was a configuration error, until one of their sends succeeds.
        self.unhealthy = self.outcomes.unhealthy
        self._stopping = asyncio.Event()
        self._running = False
        self._urgent_pools = False  # a running pool sends critical or high (routed_claim)
        self._pool_tasks: list[asyncio.Task[None]] = []

    async def run(self, channels: Collection[str] | None = None) -> None:
        """Claim and send for ``channels`` (every configured channel when None) until stopped."""
        self.writer.start()
        if channels is not None:
            # The others are served by other processes (`herald serve` with worker children).
            self.pools = {name: p for name, p in self.pools.items() if name in channels}
        self._pool_tasks = [
            asyncio.create_task(self._pool_loop(p), name=f"herald-pool-{p.channel}")
            for p in self.pools.values()
        ]
        self._urgent_pools = any(p.min_rank <= 1 for p in self.pools.values())
        self._running = True
        heartbeat = asyncio.create_task(self._heartbeat(), name="herald-lease-heartbeat")
        try:
            await self._stopping.wait()
            # Pool loops finish their current claim (and start what it returned) before exiting.
            await asyncio.gather(*self._pool_tasks, return_exceptions=True)
        finally:
            for tk in [*self._pool_tasks, heartbeat]:
                tk.cancel()
            for tk in [*self._pool_tasks, heartbeat]:
                with contextlib.suppress(asyncio.CancelledError):
                    await tk

    async def stop(self, grace: float) -> None:
        """Stop claiming, let sends in flight finish (up to ``grace`` s), commit their results."""
        self._stopping.set()
        self.queue.wake(None)
        deadline = asyncio.get_running_loop().time() + grace
        if self._pool_tasks:
            # A claim under way when the stop came still hands its deliveries to send tasks,
            # which are then waited for below: nothing claimed is left behind in `sending`.
            await asyncio.wait(self._pool_tasks, timeout=grace)
        loop = asyncio.get_running_loop()
        while in_flight := [tk for p in self.pools.values() for tk in p.in_flight.values()]:
            # Again until none is left: a routing commit under way may start claimed sends.
            remaining = max(0.0, deadline - loop.time())
            _, pending = await asyncio.wait(in_flight, timeout=remaining)
            if pending:
                for tk in pending:
                    tk.cancel()  # their leases expire and the deliveries are retried, counted as ambiguous
                break
        await self.writer.close()

    async def _pool_loop(self, pool: ChannelPool) -> None:
        batching = batcher(pool)
        while not self._stopping.is_set():
            free = pool.concurrency - pool.busy()
            claimed: list[Delivery] = []
            if free > 0:
                # The last `reserved_high` slots only go to critical and high (when the pool
                # serves both those and lower lanes).
                reserved = pool.reserved_high if pool.min_rank <= 1 < pool.max_rank else 0
                general_free = free - max(0, reserved - pool.high_in_flight)
                max_rank = pool.max_rank if general_free > 0 else 1
                limit = min(general_free if general_free > 0 else free, self.claim_batch)
                if batching is not None and pool.batching:
                    limit = max(limit, min(batching.batch_limit, MAX_BATCH_CLAIM))
                try:
                    # A claim is short and the step between queued and sent for every lane
                    # (critical first): it goes before batch work on the database.
                    with urgency.urgent():
                        claimed = await self.queue.claim(
                            pool.channel,
                            owner=self.owner,
                            limit=limit,
                            max_rank=max_rank,
                            lease=self.lease,
                            now=self.clock.now(),
                            min_rank=pool.min_rank,
                        )
                except HeraldError as exc:
                    log.warning("deliver.claim_failed", channel=pool.channel, error=exc.detail)
                except Exception:  # a bug in a queue adapter must not stop this channel for good
                    log.exception("deliver.claim_crashed", channel=pool.channel)
                    await asyncio.sleep(self.idle_wait)
                if batching is not None:
                    singles, together = groups(batching, claimed)
                    pool.batching = bool(together)
                    for group in together:
                        self._start_batch(pool, batching, group)
                    claimed_all, claimed = claimed, singles
                else:
                    claimed_all = claimed
                for d in claimed:
                    self._start(pool, d)
                claimed = claimed_all
                if claimed and len(claimed) >= limit:
                    continue  # there may be more right now
            await self.queue.wait(pool.channel, self.idle_wait, pool.max_rank)

    # Deliveries routed here, written already claimed (RouterService, Store.save_routed_many) ---
    def routed_claim(self, deliveries: Sequence[Delivery]) -> RoutedClaim | None:
        """The critical/high deliveries of ``deliveries`` that this process's own senders take
        as they are written (a claim transaction and a queue round trip less for each): due
        now, of a lane a running pool of this process sends, as many as it has free slots."""
        if not self._running or self._stopping.is_set() or not self._urgent_pools:
            return None  # e.g. a child of bulk lanes only: no walk over every routed delivery
        now = self.clock.now()
        free: dict[str, int] = {}
        ids: set[str] = set()
        for d in deliveries:
            pool = self.pools.get(d.channel)
            rank = d.priority.rank
            if pool is None or rank > 1 or not pool.min_rank <= rank <= pool.max_rank or d.due_at > now:
                continue
            left = free.setdefault(d.channel, pool.concurrency - pool.busy())
            if left > 0:
                free[d.channel] = left - 1
                ids.add(d.id)
        if not ids:
            return None
        return RoutedClaim(owner=self.owner, until=now + self.lease, ids=frozenset(ids))

    def start_claimed(self, deliveries: Sequence[Delivery]) -> None:
        """Send deliveries committed claimed by :meth:`routed_claim` (status ``sending``)."""
        for d in deliveries:
            pool = self.pools.get(d.channel)
            if pool is None or self.writer.closed:
                # Stopped meanwhile: the lease runs out and any sender retries it (recorded
                # ambiguous, as every expired lease is).
                log.warning("deliver.claimed_after_stop", delivery_id=d.id)
                continue
            self._start(pool, d)

    def _start(self, pool: ChannelPool, d: Delivery) -> None:
        high = d.priority.rank <= 1
        if high:
            pool.high_in_flight += 1
        task = asyncio.create_task(self._deliver(pool, d), name=f"herald-send-{d.id}")
        pool.in_flight[d.id] = task

        def done(_: asyncio.Task[None]) -> None:
            pool.in_flight.pop(d.id, None)
            if high:
                pool.high_in_flight -= 1
            # A slot came free: this pool claims again. Only this process: a wake for everyone
            # (NOTIFY on PostgreSQL, the outbox relay, worker children) per finished send was
            # an outbox pass per send in every worker of the scale-out drain.
            self.queue.wake_local(pool.channel)

        task.add_done_callback(done)

    def _start_batch(self, pool: ChannelPool, provider: BatchProvider, group: list[Delivery]) -> None:
        """One provider call for deliveries of one notification with the same content."""
        high = group[0].priority.rank <= 1
        if high:
            pool.high_in_flight += 1
        pool.batched += len(group) - 1
        name = f"herald-send-batch-{group[0].id}"
        task = asyncio.create_task(self._deliver_batch(provider, group), name=name)
        for d in group:
            pool.in_flight[d.id] = task

        def done(_: asyncio.Task[None]) -> None:
            for d in group:
                pool.in_flight.pop(d.id, None)
            pool.batched -= len(group) - 1
            if high:
                pool.high_in_flight -= 1
            self.queue.wake_local(pool.channel)

        task.add_done_callback(done)

    async def _deliver_batch(self, provider: BatchProvider, group: list[Delivery]) -> None:
        try:
            now = self.clock.now()
            results: list[DeliveryResult] = []
            live: list[Delivery] = []
            for d in group:
                if audience.expired(d.expires_at, now):
                    results.append(self.outcomes.expired(d, now))
                else:
                    live.append(d)
            if live:
                messages = [self._message(d) for d in live]
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(self.send_timeout):
                        outcomes = await provider.send_batch(messages)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the call itself failed: every one of them gets it
                    outcomes = [exc] * len(live)
                latency = (time.perf_counter() - started) * 1000
                log.info(
                    "delivery.batch_sent",
                    notification_id=live[0].notification_id,
                    channel=live[0].channel,
                    provider=provider.name,
                    deliveries=len(live),
                    latency_ms=round(latency, 2),
                )
                for d, outcome in zip(live, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        named = outcome.provider if isinstance(outcome, DeliveryError) else None
                        used = named or provider.name
                        results.append(self.outcomes.failure(d, d.attempts_made + 1, used, outcome, latency))
                    else:
                        results.append(self.outcomes.sent(d, provider.name, outcome, latency, quiet=True))
            await asyncio.gather(*(self.writer.submit(r) for r in results))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the pool; the lease expiry retries the deliveries
            log.exception("deliver.internal_error", delivery_id=group[0].id, batch=len(group))

    def _recorded(self, result: DeliveryResult, applied: bool) -> None:
        self.observer.recorded(result, applied)
        if applied and result.new_status == S.SKIPPED:  # expired, at the claim or before a retry
            fields = skipped_fields(
                result.delivery_id,
                result.reason or "",
                notification_id=result.notification_id or None,
                channel=result.channel or None,
            )
            log.info(SKIPPED_EVENT, **fields)
        if applied and result.new_status == S.RETRYING:
            # A retry is new work (due now, or later: the scheduler and the relay look at due
            # times when they wake): for this process and every other.
            self.queue.wake(result.channel)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            ids = [i for p in self.pools.values() for i in p.in_flight]
            if ids:
                with contextlib.suppress(HeraldError):
                    await self.queue.extend(ids, owner=self.owner, until=self.clock.now() + self.lease)

    async def _deliver(self, pool: ChannelPool, d: Delivery) -> None:
        try:
            result = await self._attempt(pool, d)
            await self.writer.submit(result)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the pool; the lease expiry retries the delivery
            log.exception("deliver.internal_error", delivery_id=d.id)

    async def _attempt(self, pool: ChannelPool, d: Delivery) -> DeliveryResult:
        now = self.clock.now()
        n = d.attempts_made + 1
        if audience.expired(d.expires_at, now):
            return self.outcomes.expired(d, now)
        provider = pool.providers[0]
        message = self._message(d)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.send_timeout):
                receipt = await provider.send(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            latency = (time.perf_counter() - started) * 1000
            used = (exc.provider if isinstance(exc, DeliveryError) else None) or provider.name
            return self.outcomes.failure(d, n, used, exc, latency)
        latency = (time.perf_counter() - started) * 1000
        return self.outcomes.sent(d, provider.name, receipt, latency)

    def _message(self, d: Delivery) -> OutboundMessage:
        return OutboundMessage(
            delivery_id=d.id,
            notification_id=d.notification_id,
            user_id=d.user_id,
            channel=d.channel,
            address=d.address or "",
            content=d.content,
            category=d.category,
            priority=d.priority,
            attempt=d.attempts_made + 1,
            expires_at=d.expires_at,
            unsubscribe_url=d.content.get("unsubscribe_url"),
            metadata=d.content.get("_meta") or {},
        )


# Importable from here as before.
__all__ = ["ChannelPool", "DeliveryObserver", "DeliveryService", "ResultWriter", "classify"]
