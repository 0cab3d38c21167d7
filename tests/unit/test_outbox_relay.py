"""The outbox relay keeps relaying through an unexpected error (issue 5): a relay task that died
would silently stop every delivery on a broker queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from structlog.testing import capture_logs

from herald.adapters.queue.outbox_relay import OutboxRelay
from herald.bootstrap import SystemClock
from herald.ports import OutboxItem
from herald.testing import memory_store
from tests.contract.conftest import seed
from tests.integration.test_reliability import eventually


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
