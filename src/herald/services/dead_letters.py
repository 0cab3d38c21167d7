"""Dead letters: list them, put them back in the queue. Written once; the API
(``/v1/dead-letters``), the console and ``herald dead-letters`` all call this service.

A replay gives each dead delivery a fresh attempt budget (its history stays) and wakes the
senders of its channel, wherever they run: :meth:`Queue.wake` wakes this process's senders and,
on PostgreSQL, every other herald process's too (``NOTIFY``: the ``sql`` queue's senders, the
outbox relays of a broker queue). A ``herald dead-letters replay`` run from a shell therefore
reaches the running herald at once. On SQLite nothing carries a wake-up from one process to
another: a running herald's senders find a replay from another process at their next idle
poll, within ``queue.idle_wait_seconds`` (1 s by default). Within one process (the API, the
console, and ``herald serve``'s worker children, which their parent wakes) it is at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from herald.domain.errors import Conflict, NotFound
from herald.domain.models import Delivery, DeliveryStatus
from herald.ports import Clock, DeadLetterFilter, DeadLetterServiceStore, Queue

MAX_PAGE = 10_000  # dead deliveries read or replayed in one go


class DeadLetterService:
    def __init__(self, store: DeadLetterServiceStore, queue: Queue, clock: Clock) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock

    async def find(self, flt: DeadLetterFilter) -> list[Delivery]:
        """Dead deliveries, newest first, each with its attempts (oldest first)."""
        return await self.store.list_dead_letters(flt)

    async def count(self, flt: DeadLetterFilter) -> int:
        """How many match ``flt`` (at most its limit)."""
        return len(await self.store.list_dead_letters(flt))

    async def replay(self, delivery_ids: Iterable[str]) -> list[Delivery]:
        """Replay those of these deliveries that are dead (the others are left alone) and wake
        the senders of their channels."""
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return []
        replayed = await self.store.replay_dead_letters(ids, now=self.clock.now())
        for channel in sorted({d.channel for d in replayed}):
            self.queue.wake(channel)
        return replayed

    async def replay_one(self, delivery_id: str) -> Delivery:
        """Replay one dead delivery: NotFound if it does not exist, Conflict if it is not dead."""
        replayed = await self.replay([delivery_id])
        if not replayed:
            d = await self.store.get_delivery(delivery_id)
            if d is None:
                raise NotFound(f"delivery {delivery_id} does not exist")
            raise Conflict(f"delivery {delivery_id} is {d.status.value}, not in the dead-letter queue")
        return replayed[0]

    async def replay_matching(self, flt: DeadLetterFilter) -> list[Delivery]:
        """Replay one page of the dead deliveries matching ``flt`` (its limit, newest first)."""
        return await self.replay(d.id for d in await self.store.list_dead_letters(flt))

    async def replay_all(self, flt: DeadLetterFilter) -> int:
        """Replay every dead delivery matching ``flt``, :data:`MAX_PAGE` at a time, until none is
        left (a replayed delivery is no longer dead). Returns how many were replayed."""
        page_filter = dataclasses.replace(flt, cursor=None, limit=MAX_PAGE)
        total = 0
        while True:
            done = await self.replay_matching(page_filter)
            if not done:
                return total
            total += len(done)

    async def replay_exactly(self, delivery_ids: Iterable[str]) -> tuple[int, list[str]]:
        """All or nothing: when every id names a dead delivery, replay them and return (count,
        []); otherwise replay none and return (0, the ids that are unknown or not dead)."""
        wanted = list(dict.fromkeys(delivery_ids))
        found = [await self.store.get_delivery(i) for i in wanted]
        unknown = [
            i for i, d in zip(wanted, found, strict=True) if d is None or d.status != DeliveryStatus.DEAD
        ]
        if unknown:
            return 0, unknown
        return len(await self.replay(wanted)), []
