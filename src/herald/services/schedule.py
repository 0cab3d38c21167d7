"""Schedule: the timer of the system.

Promotes scheduled deliveries when due, skips expired ones, returns deliveries whose worker
lost its lease to the queue (counted as ambiguous attempts), and wakes the channels whose work
became due. It sleeps until the next due time, or until woken.

Promotion is paced: critical and high deliveries are queued as soon as they are due, in chunks;
normal and low ones at ``promote_rate`` a second at most (a token bucket holding one second of
it), in due order, the rest staying ``scheduled`` until their turn. A campaign of 100,000 due at
09:00 then never lands as one transaction of several seconds and one burst of relaying that takes
the machine from the critical traffic of that minute; the rate is set above what the senders
drain, so they never run dry.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import structlog

from herald.domain.errors import HeraldError
from herald.domain.models import Priority
from herald.ports import Clock, Queue, TimerStore
from herald.services.digest import DigestService
from herald.services.leader import LeaderLease

log = structlog.get_logger("herald.schedule")

_URGENT = [Priority.CRITICAL.rank, Priority.HIGH.rank]
_BULK = [Priority.NORMAL.rank, Priority.LOW.rank]


class SchedulerService:
    def __init__(
        self,
        store: TimerStore,
        queue: Queue,
        clock: Clock,
        *,
        max_sleep: float = 1.0,
        digests: DigestService | None = None,
        maintain_every: float = 10.0,
        promote_rate: float | None = 5_000.0,
        promote_chunk: int = 1_000,
    ) -> None:
        self.digests = digests  # builds due digests on every tick (held items wake next_due)
        self.store = store
        self.queue = queue
        self.clock = clock
        self.max_sleep = max_sleep
        self.promote_rate = promote_rate  # normal/low deliveries queued a second; None: no limit
        self.promote_chunk = promote_chunk  # rows per promotion transaction
        self._tokens = promote_rate or 0.0
        self._tokens_at: float | None = None
        self._throttled = False
        self.maintain_every = maintain_every  # seconds between two Store.maintain calls
        self._maintained_at = -math.inf
        self._maintaining: asyncio.Task[None] | None = None
        self._signal = asyncio.Event()

    def wake(self) -> None:
        self._signal.set()

    async def tick(self) -> float | None:
        """One pass; returns the next time something becomes due."""
        now = self.clock.now()
        promoted = await self._promote(now)  # woken chunk by chunk already
        channels: set[str] = set()
        expired = await self.store.expire_deliveries(now=now)
        if expired:
            log.info("deliveries.expired", count=expired)
        reclaimed = await self.store.reclaim_expired_leases(now=now)
        if reclaimed:
            log.warning("deliveries.leases_reclaimed", channels=reclaimed)
        channels.update(reclaimed)
        if self.digests is not None:
            channels.update(await self.digests.run_due())
        # Retries that became due since the last pass: wake every channel, claims are cheap.
        next_due = await self.store.next_due(now=now)
        if self._throttled and self.promote_rate:
            refill = now + self.promote_chunk / self.promote_rate
            next_due = refill if next_due is None else min(next_due, refill)
        for ch in channels - promoted:
            self.queue.wake(ch)
        self.queue.wake(None)
        return next_due

    async def _promote(self, now: float) -> set[str]:
        """Queue what is due: the urgent lanes whole, the bulk lanes as the rate allows. Each
        chunk's channels are woken at once."""
        channels: set[str] = set()

        async def chunk(limit: int | None, ranks: list[int] | None) -> int:
            promoted = await self.store.promote_scheduled(now=now, limit=limit, ranks=ranks)
            for ch in set(promoted.channels) - channels:
                self.queue.wake(ch)
            channels.update(promoted.channels)
            return promoted.count

        rate = self.promote_rate
        if rate is None:
            await chunk(None, None)
            return channels
        size = self.promote_chunk
        while await chunk(size, _URGENT) >= size:
            pass
        if self._tokens_at is not None:
            self._tokens = min(rate, self._tokens + rate * max(0.0, now - self._tokens_at))
        self._tokens_at = now
        self._throttled = False
        while True:
            if self._tokens < 1:
                self._throttled = True  # more may be due: come back when a chunk's worth is in
                break
            want = min(size, int(self._tokens))
            got = await chunk(want, _BULK)
            self._tokens -= got
            if got < want:
                break
        return channels

    def _maybe_maintain(self, now: float) -> None:
        """Store housekeeping every ``maintain_every`` s, in the background (a vacuum of a big
        table takes a while; ticks go on meanwhile), one at a time."""
        if now - self._maintained_at < self.maintain_every and now >= self._maintained_at:
            return
        if self._maintaining is not None and not self._maintaining.done():
            return
        self._maintained_at = now
        self._maintaining = asyncio.create_task(self._maintain(), name="herald-store-maintenance")

    async def _maintain(self) -> None:
        try:
            cleaned = await self.store.maintain()
        except HeraldError as exc:
            log.warning("schedule.maintenance_failed", error=exc.detail)
            return
        except Exception:  # housekeeping must never stop the scheduler
            log.exception("schedule.maintenance_crashed")
            return
        if cleaned:
            log.info("store.vacuumed", tables=cleaned)

    async def run(self, stopping: asyncio.Event, leader: LeaderLease | None = None) -> None:
        """Tick until ``stopping``; with ``leader``, only while this process holds the lease."""
        while not stopping.is_set():
            if leader is not None and not await leader.wait_leader(stopping, self.max_sleep):
                continue
            try:
                next_due = await self.tick()
            except HeraldError as exc:
                log.warning("schedule.backend_error", error=exc.detail)
                next_due = None
            self._maybe_maintain(self.clock.now())
            sleep = self.max_sleep
            if next_due is not None:
                sleep = min(sleep, max(0.0, next_due - self.clock.now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), sleep)
            self._signal.clear()
        if self._maintaining is not None:
            self._maintaining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintaining
