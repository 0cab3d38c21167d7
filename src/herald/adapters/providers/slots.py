"""Provider connections handed out by priority: critical and high never wait behind low.

A provider has a fixed number of connections (SMTP's pool, an HTTP client's keep-alive
connections). With a first-come semaphore, a critical send that arrives while a bulk backlog
holds every connection waits behind every low send queued before it: 0.5-0.9 s measured with
SMTP's pool of 4 in a split deployment (issue 23). :class:`PrioritySlots` instead

* keeps ``reserved`` of the ``size`` slots for critical and high (rank <= 1): normal and low
  never hold more than ``size - reserved`` at once, so a critical send finds a slot free or
  soon free even when the bulk saturates the provider;
* hands a freed slot to the waiter of the highest lane first (FIFO within a lane).

A cancelled waiter leaves the queue; a slot handed to a waiter cancelled at that moment goes to
the next one. Everything runs on one event loop (no locks needed).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

URGENT_RANK = 1  # critical (0) and high (1) may use the reserved slots


class PrioritySlots:
    def __init__(self, size: int, reserved: int = 0) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        # Leave at least one slot to the bulk, whatever the configuration says.
        self.reserved = max(0, min(reserved, size - 1))
        self.used = 0
        self.bulk_used = 0  # slots held by normal/low
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # (rank, order, future)
        self._order = itertools.count()

    def _fits(self, rank: int) -> bool:
        if self.used >= self.size:
            return False
        return rank <= URGENT_RANK or self.bulk_used < self.size - self.reserved

    def _take(self, rank: int) -> None:
        self.used += 1
        if rank > URGENT_RANK:
            self.bulk_used += 1

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    async def acquire(self, rank: int) -> None:
        if not self._waiters and self._fits(rank):
            self._take(rank)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (rank, next(self._order), fut)
        heapq.heappush(self._waiters, entry)
        self._wake()  # a slot may be free for this lane although others wait (bulk over its share)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._give_back(rank)  # granted as we were cancelled: pass it on
            elif entry in self._waiters:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self, rank: int) -> None:
        self._give_back(rank)

    def _give_back(self, rank: int) -> None:
        self.used -= 1
        if rank > URGENT_RANK:
            self.bulk_used -= 1
        self._wake()

    def _wake(self) -> None:
        """Grant free slots to waiters, highest lane first; a bulk waiter that does not fit
        (its share is used) does not block an urgent one behind it."""
        while self._waiters and self.used < self.size:
            rank, _, fut = self._waiters[0]
            if fut.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            if not self._fits(rank):
                return  # a bulk waiter over the bulk's share: the rest of the heap is bulk too
            heapq.heappop(self._waiters)
            self._take(rank)
            fut.set_result(None)

    @asynccontextmanager
    async def slot(self, rank: int) -> AsyncIterator[None]:
        await self.acquire(rank)
        try:
            yield
        finally:
            self.release(rank)


def reserved_share(size: int) -> int:
    """Slots kept for critical and high when a provider's configuration does not say: an
    eighth of them, at least one (none when there is only one)."""
    return max(1, size // 8) if size > 1 else 0
