"""The scheduler's store housekeeping: on a cadence, in the background, never fatal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from herald.bootstrap import SystemClock
from herald.domain.errors import ServiceUnavailable
from herald.services.schedule import SchedulerService
from herald.testing import memory_queue, memory_store


async def test_maintenance_runs_every_few_seconds_and_a_failure_does_not_stop_the_ticks() -> None:
    store = memory_store()
    await store.start()
    calls: list[float] = []
    ticks = 0
    clock = SystemClock()

    async def maintain() -> list[str]:
        calls.append(clock.now())
        if len(calls) == 1:
            raise ServiceUnavailable("database unavailable")  # logged; the next one runs
        await asyncio.sleep(2.0)  # a long vacuum: ticks go on meanwhile, no second one starts
        return ["outbox"]

    store.maintain = maintain  # type: ignore[method-assign]

    class Counting(SchedulerService):
        async def tick(self) -> float | None:
            nonlocal ticks
            ticks += 1
            return await super().tick()

    scheduler = Counting(store, memory_queue(store), clock, max_sleep=0.02, maintain_every=0.1)
    stopping = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stopping))

    async def until(condition: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + 5
        while not condition():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)

    await until(lambda: len(calls) == 2)  # the first failed; the next came on the cadence
    assert calls[1] - calls[0] >= 0.1
    ticks_before = ticks
    await until(lambda: ticks > ticks_before + 5)  # ticks go on during the long one ...
    assert len(calls) == 2  # ... and no second one starts meanwhile
    stopping.set()
    await task
    await store.close()
