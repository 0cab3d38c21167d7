"""Paced promotion: a released campaign is queued as the senders drain it, the urgent lanes at
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


async def test_bulk_is_queued_up_to_promote_ahead_and_topped_up_as_it_drains() -> None:
    store = memory_store()
    await store.start()
    queue = memory_queue(store)
    clock = FakeClock(NOW)
    lows = await seed(store, *_due_lows(12))
    (crit,) = await seed(store, {"status": S.SCHEDULED, "due_at": NOW, "priority": Priority.CRITICAL})
    low_ids = [d.id for d in lows]
    scheduler = SchedulerService(store, queue, clock, promote_ahead=5, promote_chunk=2)

    await scheduler.tick()
    assert await _queued(store, [crit.id]) == [crit.id]  # critical: at once, behind 12 due lows
    assert await _queued(store, low_ids) == low_ids[:5]  # five ahead of the senders, earliest first
    await scheduler.tick()
    assert await _queued(store, low_ids) == low_ids[:5]  # nothing drained: nothing more queued

    claimed = await queue.claim("email", owner="w", limit=3, max_rank=3, lease=30, now=NOW)
    assert {d.id for d in claimed} == {crit.id, *low_ids[:2]}  # critical first
    await scheduler.tick()
    assert await _queued(store, low_ids) == low_ids[2:7]  # topped up to five, in due order

    while await queue.claim("email", owner="w", limit=4, max_rank=3, lease=30, now=NOW):
        await scheduler.tick()
    assert await _queued(store, low_ids) == []
    for i in low_ids:  # every one was queued and claimed in the end
        d = await store.get_delivery(i)
        assert d is not None and d.status == S.SENDING


async def test_without_promote_ahead_every_due_delivery_is_queued_at_once() -> None:
    store = memory_store()
    await store.start()
    queue = memory_queue(store)
    lows = await seed(store, *_due_lows(12))
    scheduler = SchedulerService(store, queue, FakeClock(NOW), promote_ahead=None)
    await scheduler.tick()
    assert await _queued(store, [d.id for d in lows]) == [d.id for d in lows]
