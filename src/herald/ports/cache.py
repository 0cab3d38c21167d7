"""The shared cache: dedup keys and rate-limit counters every process sees."""

from __future__ import annotations

from typing import Protocol


class Cache(Protocol):
    """Dedup keys and rate-limit counters shared by every process (memory: one process only;
    Redis: every process of the deployment). Advisory state: losing it (a Redis restart) may
    let a duplicate or a burst through, never lose a delivery."""

    async def add_if_absent(self, key: str, ttl: float) -> bool:
        """Set ``key`` for ``ttl`` seconds unless present; True when this call set it.
        Atomic: of concurrent callers with one key exactly one gets True."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key`` (set by :meth:`add_if_absent`); nothing happens if it is absent."""
        ...

    async def hit_window(self, key: str, *, limit: int, window: float, now: float) -> bool:
        """Count one event in a sliding window; False (and nothing counted) when over ``limit``."""
        ...

    async def ping(self) -> None:
        """Raise ServiceUnavailable when the cache cannot answer."""
        ...

    async def close(self) -> None:
        """Release the connection (Redis) or nothing (memory); the cache is not used after."""
        ...
