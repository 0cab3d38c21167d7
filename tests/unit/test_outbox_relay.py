"""The outbox relay keeps relaying through an unexpected error (issue 5): a relay task that died
would silently stop every delivery on a broker queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from structlog.testing import capture_logs

from herald.adapters.queue.outbox_relay import OutboxRelay
from herald.bootstrap import SystemClock
from herald.domain.models import Priority
from herald.ports import OutboxItem
from herald.testing import memory_store
from tests.contract.conftest import seed
from tests.support.waits import eventually


async def test_the_relay_outlives_an_unexpected_error_and_says_so() -> None:
    store = memory_store()
    store.outbox = True
    await store.start()
    try:
        now = time.time()
        (d,) = await seed(store, {"due_at": now}, now=now)
        calls: list[list[str]] = []

        async def publish(items: Sequence[OutboxItem]) -> None:
            calls.append([i.delivery_id for i in items])
            if len(calls) == 1:
                raise RuntimeError("a bug in the broker adapter")

        relay = OutboxRelay(store, publish, SystemClock(), lease=0.1, max_sleep=0.05)
        stopping = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(relay.run(stopping))
            await eventually(lambda: asyncio.sleep(0, result=relay.relayed == 1))
            stopping.set()
            await task
        assert calls[0] == calls[-1] == [d.id]  # the same row, published once the lease ran out
        events = [e["event"] for e in logs if e["event"].startswith("outbox.")]
        assert events == ["outbox.relay_crashed", "outbox.relay_recovered"]
        assert await store.outbox_next_due() is None  # relayed and deleted
    finally:
        await store.close()


async def test_relays_of_some_lanes_publish_only_theirs_and_together_all() -> None:
    """``herald serve`` with the bulk lanes in its children: its relay publishes the critical and
    high rows, the children's the normal and low ones; nothing is left, nothing goes twice."""
    store = memory_store()
    store.outbox = True
    await store.start()
    try:
        now = time.time()
        lanes = [Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW] * 3
        seeded = await seed(store, *({"due_at": now, "priority": p} for p in lanes), now=now)
        published: dict[str, list[OutboxItem]] = {"urgent": [], "bulk": []}

        def publisher(name: str) -> Callable[[Sequence[OutboxItem]], Awaitable[None]]:
            async def publish(items: Sequence[OutboxItem]) -> None:
                published[name].extend(items)

            return publish

        urgent = OutboxRelay(store, publisher("urgent"), SystemClock(), ranks=[0, 1])
        bulk = OutboxRelay(store, publisher("bulk"), SystemClock(), ranks=[3, 2])
        assert await urgent.flush() == 6
        assert {i.priority for i in published["urgent"]} == {0, 1}
        assert await store.outbox_next_due([0, 1]) is None
        assert await store.outbox_next_due() is not None  # the bulk rows wait for their relay
        assert await bulk.flush() == 6
        assert {i.priority for i in published["bulk"]} == {2, 3}
        ids = [i.delivery_id for i in published["urgent"] + published["bulk"]]
        assert sorted(ids) == sorted(d.id for d in seeded)  # every row once
        assert await store.outbox_next_due() is None
    finally:
        await store.close()
