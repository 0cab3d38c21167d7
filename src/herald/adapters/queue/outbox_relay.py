"""The outbox relay: publishes due outbox rows to the broker, after their transaction committed.

One pass takes up to ``batch`` due rows (``Store.claim_outbox``: on PostgreSQL ``FOR UPDATE SKIP
LOCKED`` plus a short lease, so any number of relays in any number of processes share the work),
publishes them with publisher confirms and deletes them once every message was confirmed. If the
broker is down the rows are given back (due as before), the relay backs off (0.25 s doubling to
``max_backoff``) and tries again: the API keeps answering ``202`` because accepting only writes
the database, and everything accepted is published once the broker is back. A relay that dies
between publishing and deleting leaves rows that another pass publishes again after the lease:
a duplicate message, which the worker's claim acks away (the delivery is no longer claimable).

It runs in every process with the worker or scheduler role (bootstrap) and sleeps until the
earliest due row, at most ``max_sleep``, or until woken (the queue's ``wake``: a router wrote
deliveries, the scheduler promoted some). ``ranks`` narrows it to some priority lanes: every lane
must then be relayed by some process (``queue.relay_lanes``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog

from herald.domain.errors import HeraldError
from herald.ports import Clock, OutboxItem, Store

log = structlog.get_logger("herald.queue.outbox")

Publish = Callable[[Sequence[OutboxItem]], Awaitable[None]]


class OutboxRelay:
    def __init__(
        self,
        store: Store,
        publish: Publish,
        clock: Clock,
        *,
        batch: int = 500,
        lease: float = 5.0,  # a relay that dies mid-publish delays its batch this long
        max_sleep: float = 1.0,
        max_backoff: float = 5.0,
        coalesce: float = 0.005,
        ranks: Sequence[int] | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self.clock = clock
        self.batch = batch
        self.lease = lease
        self.max_sleep = max_sleep
        self.max_backoff = max_backoff
        self.coalesce = coalesce
        # The priority lanes this relay publishes (None: all). A process that sends only some
        # lanes relays only those (bootstrap, queue.relay_lanes): the bulk's relaying then runs
        # in the bulk's processes, at their CPU priority, not beside the critical path.
        self.ranks = None if ranks is None else tuple(sorted(set(ranks)))
        self.relayed = 0
        self._signal = asyncio.Event()

    def wake(self, _channel: str | None = None) -> None:
        self._signal.set()

    async def relay_once(self, *, now: float | None = None) -> int:
        """One batch: publish due rows, delete them once confirmed. Returns how many."""
        now = self.clock.now() if now is None else now
        items = await self.store.claim_outbox(limit=self.batch, now=now, lease=self.lease, ranks=self.ranks)
        if not items:
            return 0
        try:
            await self.publish(items)
        except HeraldError:
            with contextlib.suppress(HeraldError):  # else the lease gives them back later
                await self.store.release_outbox(items)
            raise
        await self.store.delete_outbox([i.id for i in items])
        self.relayed += len(items)
        return len(items)

    async def flush(self, *, now: float | None = None) -> int:
        """Publish every row due at ``now``; raise if the broker or the store is down."""
        total = 0
        while True:
            n = await self.relay_once(now=now)
            total += n
            if n < self.batch:
                return total

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            self._signal.clear()
            try:
                n = await self.relay_once()
            except Exception as exc:
                failures += 1
                if not isinstance(exc, HeraldError):
                    # A bug or an unexpected driver error: say so loudly, but keep relaying
                    # (a relay task that died would silently stop every broker delivery).
                    log.exception("outbox.relay_crashed")
                elif failures == 1:
                    log.warning("outbox.relay_failed", error=exc.detail)
                # Back off whatever wakes us meanwhile: every accepted notification would.
                await self._sleep(stopping, min(self.max_backoff, 0.25 * 2 ** min(failures - 1, 10)), None)
                continue
            if failures:
                log.info("outbox.relay_recovered", after_failures=failures)
                failures = 0
            if n >= self.batch:
                continue  # more are due right now
            sleep = self.max_sleep
            if n == 0:
                # Idle: sleep until the earliest row not yet due (a retry). Not after a pass that
                # published some: more are coming with their wakes, a retry due meanwhile waits
                # at most max_sleep, and the lookup walks the outbox index past every row
                # published but not yet vacuumed (1.5 ms a pass in the scale-out flood).
                with contextlib.suppress(HeraldError):
                    next_due = await self.store.outbox_next_due(self.ranks)
                    if next_due is not None:
                        sleep = min(sleep, max(0.0, next_due - self.clock.now()))
            if sleep > 0 and await self._sleep(stopping, sleep, self._signal):
                # Woken: let a burst of wakes (a router's chunk, many finished sends) gather.
                await asyncio.sleep(self.coalesce)

    @staticmethod
    async def _sleep(stopping: asyncio.Event, timeout: float, signal: asyncio.Event | None) -> bool:
        """Sleep up to ``timeout``; True when ``signal`` ended it."""
        waiters = [asyncio.ensure_future(stopping.wait())]
        if signal is not None:
            waiters.append(asyncio.ensure_future(signal.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return signal is not None and signal.is_set() and not stopping.is_set()
