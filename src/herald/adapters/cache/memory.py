"""The Cache port in process memory: for one-process deployments and tests."""

from __future__ import annotations

import asyncio
import time
from collections import deque


class MemoryCache:
    def __init__(self) -> None:
        self._keys: dict[str, float] = {}
        self._windows: dict[str, deque[float]] = {}
        self._lock = asyncio.Lock()

    async def add_if_absent(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        expiry = self._keys.get(key)
        if expiry is not None and expiry > now:
            return False
        self._keys[key] = now + ttl
        if len(self._keys) > 100_000:
            self._keys = {k: v for k, v in self._keys.items() if v > now}
        return True

    async def delete(self, key: str) -> None:
        self._keys.pop(key, None)

    async def hit_window(self, key: str, *, limit: int, window: float, now: float) -> bool:
        hits = self._windows.setdefault(key, deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return False
        hits.append(now)
        return True

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
