"""Paced promotion: a released campaign is queued at the promotion rate, the urgent lanes at
once, every delivery in due order, none left behind."""

from __future__ import annotations

from herald.adapters.store.sql import SqlStore
from herald.domain.models import DeliveryStatus, Priority
from herald.services.schedule import SchedulerService
from herald.testing import FakeClock, memory_queue, memory_store
from tests.contract.conftest import NOW, seed

S = DeliveryStatus


def _due_lows(n: int) -> list[dict[str, object]]:
    return [{"status": S.SCHEDULED, "due_at": NOW - 100 + i, "priority": Priority.LOW} for i in range(n)]


async def _queued(store: SqlStore, ids: list[str]) -> list[str]:
    out = []
    for i in ids:
        d = await store.get_delivery(i)
        if d is not None and d.status == S.QUEUED:
            out.append(i)
    return out


async def test_bulk_is_queued_at_the_promotion_rate_and_critical_at_once() -> None:
    store = memory_store()
    await store.start()
    clock = FakeClock(NOW)
    lows = [d.id for d in await seed(store, *_due_lows(12))]
    (crit,) = await seed(store, {"status": S.SCHEDULED, "due_at": NOW, "priority": Priority.CRITICAL})
    # 4 a second, 2 a transaction: a bucket of one second (4) to start with
    scheduler = SchedulerService(store, memory_queue(store), clock, promote_rate=4, promote_chunk=2)

    next_due = await scheduler.tick()
    assert await _queued(store, [crit.id]) == [crit.id]  # critical: at once, behind 12 due lows
    assert await _queued(store, lows) == lows[:4]  # the first second's worth, earliest first
    assert next_due == NOW + 0.5  # more are due: back when a chunk's worth (2 at 4/s) is in
    await scheduler.tick()
    assert await _queued(store, lows) == lows[:4]  # no time passed: nothing more
    clock.advance(0.5)
    await scheduler.tick()
    assert await _queued(store, lows) == lows[:6]
    clock.advance(10)  # a long pause refills one second's worth, not ten
    await scheduler.tick()
    assert await _queued(store, lows) == lows[:10]
    clock.advance(1)
    next_due = await scheduler.tick()
    assert await _queued(store, lows) == lows  # every one in the end, in due order
    assert next_due is None  # nothing left to come back for


async def test_without_a_promotion_rate_every_due_delivery_is_queued_at_once() -> None:
    store = memory_store()
    await store.start()
    lows = [d.id for d in await seed(store, *_due_lows(12))]
    scheduler = SchedulerService(store, memory_queue(store), FakeClock(NOW), promote_rate=None)
    await scheduler.tick()
    assert await _queued(store, lows) == lows
