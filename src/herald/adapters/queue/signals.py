"""In-process wake-ups: one asyncio event per channel.

A wake may say the highest lane of the new work (``top_rank``, 0 = critical); a waiter that
sends only higher lanes (``max_rank`` below it: ``herald serve``'s critical sender beside
children that send everything) sleeps on through it instead of claiming for nothing: one
SQLite write transaction per routing commit in the serve process, at 500 sends a second.
"""

from __future__ import annotations

import asyncio
import contextlib

ANY_LANE = 0  # a wake that does not say: every waiter looks


class Signals:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._top: dict[str, int] = {}  # channel -> the highest lane woken since the last wait

    def _event(self, channel: str) -> asyncio.Event:
        ev = self._events.get(channel)
        if ev is None:
            ev = self._events[channel] = asyncio.Event()
        return ev

    def wake(self, channel: str | None = None, top_rank: int = ANY_LANE) -> None:
        if channel is None:
            for name, ev in self._events.items():
                self._top[name] = ANY_LANE
                ev.set()
        else:
            self._top[channel] = min(self._top.get(channel, top_rank), top_rank)
            self._event(channel).set()

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        """Return when woken for work in a lane up to ``max_rank``, or after ``timeout``."""
        ev = self._event(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if ev.is_set() and self._top.get(channel, ANY_LANE) <= max_rank:
                break
            if ev.is_set():  # only lanes this waiter does not send
                ev.clear()
                self._top.pop(channel, None)
            left = deadline - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), left)
            if not ev.is_set():
                break  # timed out
        ev.clear()
        self._top.pop(channel, None)
