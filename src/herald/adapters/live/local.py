"""In-process wake-ups of live inbox streams."""

from __future__ import annotations

from collections.abc import Callable

import structlog

log = structlog.get_logger("herald.live")


class LocalLiveSignals:
    def __init__(self) -> None:
        self._callbacks: list[Callable[[str | None], None]] = []

    async def start(self) -> None:
        return None

    def on_wake(self, callback: Callable[[str | None], None]) -> None:
        self._callbacks.append(callback)

    def notify(self, user_id: str) -> None:
        self.deliver(user_id)

    def deliver(self, user_id: str | None) -> None:
        for callback in self._callbacks:
            try:
                callback(user_id)
            except Exception:
                log.exception("live.wake_failed")

    async def close(self) -> None:
        self._callbacks.clear()
