"""In-process wake-ups by lane: a waiter of the critical lane only (herald serve beside worker
children that send every lane) sleeps through wakes for lower lanes, and wakes at once for its
own, for a wake that does not say, and for a wake of every channel."""

from __future__ import annotations

import asyncio

from herald.adapters.queue.signals import Signals


async def _woken(signals: Signals, *, max_rank: int, timeout: float = 10.0) -> float:
    # Woken: well before the timeout (a loaded machine may take a while); not woken: the timeout.
    loop = asyncio.get_running_loop()
    started = loop.time()
    await signals.wait("email", timeout, max_rank)
    return loop.time() - started


async def test_a_waiter_of_higher_lanes_sleeps_through_wakes_of_lower_ones() -> None:
    s = Signals()
    waiter = asyncio.create_task(_woken(s, max_rank=0))
    await asyncio.sleep(0.02)
    s.wake("email", 1)  # high: not this waiter's
    await asyncio.sleep(0.05)
    assert not waiter.done()
    s.wake("email", 0)
    assert await asyncio.wait_for(waiter, 10) < 5


async def test_a_wake_without_a_lane_or_of_every_channel_wakes_every_waiter() -> None:
    s = Signals()
    waiter = asyncio.create_task(_woken(s, max_rank=0))
    await asyncio.sleep(0.02)
    s.wake("email")
    assert await asyncio.wait_for(waiter, 10) < 5
    waiter = asyncio.create_task(_woken(s, max_rank=0))
    await asyncio.sleep(0.02)
    s.wake(None)
    assert await asyncio.wait_for(waiter, 10) < 5


async def test_wakes_before_the_wait_count_and_a_lower_lane_alone_times_out() -> None:
    s = Signals()
    s.wake("email", 3)
    s.wake("email", 1)  # the highest lane since the last wait is kept
    assert await _woken(s, max_rank=1) < 5
    s.wake("email", 3)
    assert await _woken(s, max_rank=1, timeout=0.1) >= 0.09  # low only: slept to the timeout
    assert await _woken(s, max_rank=3, timeout=0.1) >= 0.09  # and that wake was used up
