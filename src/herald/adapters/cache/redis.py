"""The Cache port on Redis, shared by every herald process (``cache.url = "redis://..."``).

* ``add_if_absent`` is ``SET key 1 NX PX ttl``: one round trip, atomic on the server.
* ``hit_window`` is a sliding-window log in a sorted set (score = event time), updated by one
  Lua script so that counting and adding are a single atomic step: many processes hitting the
  same key at once never let more than ``limit`` events through. The key expires one window
  after its last event, so idle limiters cost nothing.

One client with one connection pool per process. Redis errors that mean "cannot reach the
server" become :class:`~herald.domain.errors.ServiceUnavailable` (503 at the API).
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from herald.domain.errors import ConfigurationError, ServiceUnavailable

try:
    from redis import asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ModuleNotFoundError:  # the optional extra is not installed
    raise ConfigurationError(
        "cache.url is a Redis URL but the redis package is not installed: pip install 'herald[redis]'"
    ) from None

T = TypeVar("T")

# KEYS[1] window key; ARGV: now, window start (exclusive), limit, member, ttl in ms.
_HIT_WINDOW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisCache:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "herald:",
        max_connections: int = 32,
        timeout: float = 5.0,
    ) -> None:
        self.prefix = prefix
        # A blocking pool: a burst larger than the pool waits for a connection instead of
        # failing (the default pool raises MaxConnectionsError at once).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # closing the client closes its pool
        self._hit_window = self._redis.register_script(_HIT_WINDOW)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            raise ServiceUnavailable(f"cache unavailable: {type(err).__name__}") from err

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def add_if_absent(self, key: str, ttl: float) -> bool:
        name = self.prefix + key
        done = await self._call(lambda: self._redis.set(name, b"1", nx=True, px=_ms(ttl)))
        return bool(done)

    async def delete(self, key: str) -> None:
        name = self.prefix + key
        await self._call(lambda: self._redis.delete(name))

    async def hit_window(self, key: str, *, limit: int, window: float, now: float) -> bool:
        if limit <= 0:
            return False
        # A random member: two events at the same instant are two events, not one.
        member = f"{now!r}:{os.urandom(6).hex()}"
        args: list[str | int] = [repr(now), repr(now - window), limit, member, _ms(window)]
        keys = [self.prefix + key]
        counted = await self._call(lambda: self._hit_window(keys=keys, args=args))
        return bool(counted)

    async def close(self) -> None:
        await self._redis.aclose()
