"""The overview's week of counts: a refresh re-reads the current hour, not the week; a first
look that cannot count everything within its budget shows the rest as pending and finishes in
the background."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from herald.ports_console import BucketCount
from herald.services.console import HOUR, Rollup


class CountingReads:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.counted: list[float] = []

    async def bucket_counts(self, ranges: Sequence[tuple[float, float]]) -> list[list[BucketCount]]:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.counted.extend(start for start, _ in ranges)
        return [[BucketCount("email", "sent", 1, 1, 0, 0)] for _ in ranges]


NOW = 1_800_000_000.0 - 1_800_000_000.0 % HOUR + 1_800.0  # half past an hour
FIRST = NOW - NOW % HOUR - 167 * HOUR
LAST = NOW - NOW % HOUR


async def test_a_refresh_recounts_the_running_hour_and_nothing_old() -> None:
    reads = CountingReads()
    rollup = Rollup(reads, budget=60.0)  # type: ignore[arg-type]
    hours = await rollup.hours(FIRST, LAST, NOW)
    assert len(hours) == 168 and all(v is not None for v in hours.values())
    assert len(reads.counted) == 168
    reads.counted.clear()
    await rollup.hours(FIRST, LAST, NOW + 20)  # 20 s later
    assert reads.counted == [LAST]  # only the hour still running
    reads.counted.clear()
    # Two hours later: an hour is recounted once its count is older than a tenth of its age
    # (recent hours still move: retries, callbacks); nothing older than a day is.
    later = NOW + 2 * HOUR
    await rollup.hours(FIRST + 2 * HOUR, LAST + 2 * HOUR, later)
    assert reads.counted and min(reads.counted) >= later - 21 * HOUR
    assert len(reads.counted) <= 23
    # The day view shares the week's buckets: it recounts nothing more.
    reads.counted.clear()
    await rollup.hours(LAST + 2 * HOUR - 23 * HOUR, LAST + 2 * HOUR, later + 1)
    assert reads.counted == []


async def test_a_first_look_beyond_its_budget_is_pending_then_completed_in_the_background() -> None:
    reads = CountingReads(delay=0.01)
    rollup = Rollup(reads, budget=0.0)  # type: ignore[arg-type]
    hours = await rollup.hours(FIRST, LAST, NOW)
    pending = [s for s, v in hours.items() if v is None]
    assert 0 < len(pending) < 168
    assert hours[LAST] is not None  # newest first: the hours most looked at are there at once
    assert rollup.background is not None
    await asyncio.wait_for(rollup.background, 30)
    hours = await rollup.hours(FIRST, LAST, NOW)
    assert all(v is not None for v in hours.values())
    assert sorted(reads.counted) == sorted(set(reads.counted))  # each hour counted once
    await rollup.close()


async def test_close_stops_the_background_count() -> None:
    reads = CountingReads(delay=0.05)
    rollup = Rollup(reads, budget=0.0)  # type: ignore[arg-type]
    await rollup.hours(FIRST, LAST, NOW)
    task: Any = rollup.background
    await rollup.close()
    assert task.done()
