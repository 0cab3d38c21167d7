"""In-process wake-ups: one asyncio event per channel."""

from __future__ import annotations

import asyncio
import contextlib


class Signals:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, channel: str) -> asyncio.Event:
        ev = self._events.get(channel)
        if ev is None:
            ev = self._events[channel] = asyncio.Event()
        return ev

    def wake(self, channel: str | None = None) -> None:
        if channel is None:
            for ev in self._events.values():
                ev.set()
        else:
            self._event(channel).set()

    async def wait(self, channel: str, timeout: float) -> None:
        ev = self._event(channel)
        if not ev.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout)
        ev.clear()
