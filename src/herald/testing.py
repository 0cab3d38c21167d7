"""Public test twins of herald's ports, for herald's own tests and for users' tests.

* :func:`memory_store` — the real SQL store on an in-memory SQLite database: same SQL, same
  behaviour, no files.
* :class:`FakeClock` — time that moves only when told to.
* :class:`RecordingProvider` — a provider that records what it was asked to send and answers
  with scripted outcomes (errors from :mod:`herald.domain.errors`), for unit tests of the
  services. Provider *protocols* are tested against emulators, not against this.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from herald.adapters.cache.memory import MemoryCache
from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore
from herald.domain.errors import DeliveryError
from herald.domain.models import OutboundMessage, SendReceipt

__all__ = ["FakeClock", "MemoryCache", "RecordingProvider", "memory_queue", "memory_store"]


def memory_store() -> SqlStore:
    return SqlStore(Database("sqlite:///:memory:"))


def memory_queue(store: SqlStore) -> SqlQueue:
    return SqlQueue(store.db)


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when


class RecordingProvider:
    def __init__(self, name: str = "recording", *, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.sent: list[OutboundMessage] = []
        self.calls = 0
        self._script: deque[DeliveryError | None] = deque()

    def script(self, outcomes: Iterable[DeliveryError | None]) -> None:
        """Answer the next calls with these outcomes in order (None = success)."""
        self._script.extend(outcomes)

    async def send(self, message: OutboundMessage) -> SendReceipt:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._script:
            outcome = self._script.popleft()
            if outcome is not None:
                raise outcome
        self.sent.append(message)
        return SendReceipt(code="ok", provider_message_id=f"rec-{len(self.sent)}")

    async def close(self) -> None:
        return None
