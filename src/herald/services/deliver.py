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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from herald.domain import urgency
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    HeraldError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import (
    Attempt,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    OutboundMessage,
    Outcome,
    Reason,
    SendReceipt,
    new_id,
)
from herald.domain.validation import mask
from herald.ports import BatchProvider, Clock, Provider, Queue, ResultsStore, RoutedClaim
from herald.services.catalog import Catalog
from herald.services.deliver_batches import MAX_BATCH_CLAIM, batcher, groups

log = structlog.get_logger("herald.deliver")

S = DeliveryStatus


class ResultWriter:
    """Group commit of delivery results: whatever finished since the last commit goes in one."""

    def __init__(
        self, store: ResultsStore, clock: Clock, on_recorded: Callable[[DeliveryResult, bool], None]
    ) -> None:
        self.store = store
        self.clock = clock
        self._pending: list[tuple[DeliveryResult, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._on_recorded = on_recorded
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herald-result-writer")

    async def submit(self, result: DeliveryResult) -> bool:
        """Queue ``result``; return once committed (True) or refused for a lost lease (False)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((result, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:500], self._pending[500:]
                try:
                    rejected = set(
                        await self.store.record_results([r for r, _ in batch], now=self.clock.now())
                    )
                except HeraldError as exc:
                    # Keep them: the lease will expire and the delivery be retried if we cannot
                    # write at all, but a passing outage must not drop finished sends.
                    log.error("deliver.record_failed", error=exc.detail, results=len(batch))
                    self._pending = batch + self._pending
                    await asyncio.sleep(0.5)
                    continue
                for r, fut in batch:
                    ok = r.delivery_id not in rejected
                    self._on_recorded(r, ok)
                    if not fut.done():
                        fut.set_result(ok)
            if self._closing:
                return

    @property
    def closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task


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


def classify(exc: BaseException) -> tuple[Outcome, str | None, str, float | None, bool]:
    """(outcome, code, detail, retry_after, ambiguous) for an exception from a provider."""
    if isinstance(exc, DeliveryError):
        outcome = {
            "transient": Outcome.TRANSIENT,
            "permanent": Outcome.PERMANENT,
            "dead_address": Outcome.DEAD_ADDRESS,
            "config_error": Outcome.CONFIG_ERROR,
        }[exc.outcome]
        return outcome, exc.code, exc.detail, exc.retry_after, exc.ambiguous
    if isinstance(exc, TimeoutError):
        return Outcome.TRANSIENT, "timeout", "provider timed out", None, True
    if isinstance(exc, OSError):
        return Outcome.TRANSIENT, type(exc).__name__, f"connection error: {exc}", None, False
    return Outcome.TRANSIENT, type(exc).__name__, f"unexpected error: {exc}", None, True


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
        # Providers whose last outcome was a configuration error, until one of their sends succeeds.
        self.unhealthy: dict[str, dict[str, object]] = {}
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
                if d.expires_at is not None and d.expires_at <= now:
                    results.append(self._expired(d, now))
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
                        results.append(self._failure(d, d.attempts_made + 1, used, outcome, latency))
                    else:
                        results.append(self._sent(d, provider.name, outcome, latency, quiet=True))
            await asyncio.gather(*(self.writer.submit(r) for r in results))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the pool; the lease expiry retries the deliveries
            log.exception("deliver.internal_error", delivery_id=group[0].id, batch=len(group))

    def _recorded(self, result: DeliveryResult, applied: bool) -> None:
        self.observer.recorded(result, applied)
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
        if d.expires_at is not None and d.expires_at <= now:
            return self._expired(d, now)
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
            return self._failure(d, n, used, exc, latency)
        latency = (time.perf_counter() - started) * 1000
        return self._sent(d, provider.name, receipt, latency)

    def _expired(self, d: Delivery, now: float) -> DeliveryResult:
        return DeliveryResult(
            delivery_id=d.id,
            lease_owner=self.owner,
            new_status=S.SKIPPED,
            reason=Reason.EXPIRED.value,
            channel=d.channel,
            attempt=Attempt(
                n=d.attempts_made + 1,
                at=now,
                provider="-",
                outcome=Outcome.EXPIRED,
                detail="expired before sending",
            ),
            counts_against_budget=False,
        )

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

    def _sent(
        self, d: Delivery, provider: str, receipt: SendReceipt, latency: float, *, quiet: bool = False
    ) -> DeliveryResult:
        n = d.attempts_made + 1
        at = self.clock.now()
        used = receipt.provider or provider
        self.unhealthy.pop(used, None)
        if not quiet:  # a batch logs once for all of its deliveries
            log.info(
                "delivery.sent",
                delivery_id=d.id,
                channel=d.channel,
                provider=used,
                code=receipt.code,
                latency_ms=round(latency, 2),
            )
        return DeliveryResult(
            delivery_id=d.id,
            lease_owner=self.owner,
            new_status=S.SENT,
            channel=d.channel,
            attempt=Attempt(
                n=n,
                at=at,
                provider=used,
                outcome=Outcome.OK,
                code=receipt.code,
                detail=receipt.detail,
                latency_ms=round(latency, 3),
            ),
            provider_message_id=receipt.provider_message_id,
        )

    def _failure(self, d: Delivery, n: int, provider: str, exc: Exception, latency: float) -> DeliveryResult:
        outcome, code, detail, retry_after, ambiguous = classify(exc)
        now = self.clock.now()
        attempt = Attempt(
            n=n,
            at=now,
            provider=provider,
            outcome=outcome,
            code=code,
            detail=detail,
            latency_ms=round(latency, 3),
            ambiguous=ambiguous,
        )

        def result(
            status: DeliveryStatus,
            reason: str | None,
            *,
            due_at: float | None = None,
            dead: str | None = None,
            counts: bool = True,
        ) -> DeliveryResult:
            return DeliveryResult(
                delivery_id=d.id,
                lease_owner=self.owner,
                attempt=attempt,
                channel=d.channel,
                new_status=status,
                reason=reason,
                due_at=due_at,
                dead_address=dead,
                counts_against_budget=counts,
                notification_id=d.notification_id,
                fallback=bool((d.content.get("_meta") or {}).get("fallback")),
            )

        ctx = {
            "delivery_id": d.id,
            "channel": d.channel,
            "provider": provider,
            "code": code,
            "address": mask(d.address),
        }
        if isinstance(exc, DeadAddressError):
            log.warning("delivery.dead_address", **ctx, detail=detail)
            return result(S.FAILED, reason=Reason.INVALID_ADDRESS.value, dead=d.address)
        if isinstance(exc, PermanentDeliveryError):
            log.warning("delivery.failed", **ctx, detail=detail)
            # A refused destination (SSRF guard) says so; other permanent errors are generic.
            reason = Reason.BLOCKED_ADDRESS if code == Reason.BLOCKED_ADDRESS else Reason.PERMANENT_ERROR
            return result(S.FAILED, reason=reason.value)
        if isinstance(exc, ProviderConfigError):
            # Never the user's fault: hold the delivery without spending its retry budget.
            log.error("provider.config_error", **ctx, detail=detail)
            self.observer.config_error(d.channel, provider, detail)
            self.unhealthy[provider] = {
                "channel": d.channel,
                "reason": "config_error",
                "detail": detail,
                "since": now,
            }
            hold = max(self.catalog.config_hold_seconds, retry_after or 0.0)
            return result(
                S.RETRYING,
                reason=Reason.PROVIDER_CONFIG_ERROR.value,
                due_at=now + hold,
                counts=False,
            )
        if not isinstance(exc, TransientDeliveryError):
            log.warning("delivery.unexpected_error", **ctx, error=repr(exc))
        delay = self.catalog.retry.next_delay(d.budget_used + 1, retry_after=retry_after)
        if delay is None:
            log.error("delivery.dead", **ctx, attempts=n, detail=detail)
            return result(S.DEAD, reason=Reason.RETRIES_EXHAUSTED.value)
        if d.expires_at is not None and now + delay >= d.expires_at:
            return result(S.SKIPPED, reason=Reason.EXPIRED.value)
        log.info("delivery.retrying", **ctx, attempt=n, delay_s=round(delay, 3), detail=detail)
        return result(S.RETRYING, reason=outcome.value, due_at=now + delay)


class DeliveryObserver:
    """Hooks for metrics and alerts; the default does nothing."""

    def recorded(self, result: DeliveryResult, applied: bool) -> None:
        if not applied:
            log.warning(
                "delivery.result_refused",
                delivery_id=result.delivery_id,
                detail="lease lost before the result was recorded",
            )

    def config_error(self, channel: str, provider: str, detail: str) -> None:
        return None
