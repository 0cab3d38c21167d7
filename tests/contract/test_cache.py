"""The Cache port's contract, on every adapter (memory, redis)."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest

from herald.domain.errors import ConfigurationError, ServiceUnavailable
from tests.contract.conftest import NOW, CacheBackend


async def test_ping_answers_when_reachable(cache_backend: CacheBackend) -> None:
    await cache_backend.cache.ping()


async def test_add_if_absent_sets_once(cache_backend: CacheBackend) -> None:
    cache = cache_backend.cache
    assert await cache.add_if_absent("dedup:a", 30) is True
    assert await cache.add_if_absent("dedup:a", 30) is False
    assert await cache.add_if_absent("dedup:b", 30) is True


async def test_add_if_absent_expires_after_ttl(cache_backend: CacheBackend) -> None:
    cache = cache_backend.cache
    assert await cache.add_if_absent("k", 0.5) is True
    assert await cache.add_if_absent("k", 0.5) is False
    await asyncio.sleep(0.7)
    assert await cache.add_if_absent("k", 30) is True
    assert await cache.add_if_absent("k", 30) is False


async def test_delete_frees_the_key(cache_backend: CacheBackend) -> None:
    cache = cache_backend.cache
    assert await cache.add_if_absent("k", 30) is True
    await cache.delete("k")
    assert await cache.add_if_absent("k", 30) is True
    await cache.delete("never-set")  # deleting what is not there is fine


async def test_add_if_absent_has_one_winner_under_concurrency(cache_backend: CacheBackend) -> None:
    clients = [cache_backend.cache] + [await cache_backend.new_client() for _ in range(3)]
    results = await asyncio.gather(*(clients[i % 4].add_if_absent("race", 30) for i in range(40)))
    assert results.count(True) == 1


async def test_hit_window_counts_up_to_the_limit(cache_backend: CacheBackend) -> None:
    cache = cache_backend.cache
    hits = [await cache.hit_window("rate:u1", limit=3, window=60, now=NOW + i) for i in range(5)]
    assert hits == [True, True, True, False, False]
    # other keys are independent
    assert await cache.hit_window("rate:u2", limit=3, window=60, now=NOW) is True


async def test_hit_window_slides(cache_backend: CacheBackend) -> None:
    cache = cache_backend.cache
    for t in (0.0, 10.0, 20.0):
        assert await cache.hit_window("k", limit=3, window=60, now=NOW + t) is True
    assert await cache.hit_window("k", limit=3, window=60, now=NOW + 59) is False
    # the refused hit was not counted: at +60 only the first event has left the window
    assert await cache.hit_window("k", limit=3, window=60, now=NOW + 60) is True
    assert await cache.hit_window("k", limit=3, window=60, now=NOW + 61) is False
    # +70: the event at +10 has left
    assert await cache.hit_window("k", limit=3, window=60, now=NOW + 70) is True
    # long after, the window is empty again
    results = [await cache.hit_window("k", limit=3, window=60, now=NOW + 1000 + i) for i in range(4)]
    assert results == [True, True, True, False]


async def test_hit_window_counts_events_at_the_same_instant_separately(cache_backend: CacheBackend) -> None:
    cache = cache_backend.cache
    results = [await cache.hit_window("k", limit=2, window=10, now=NOW) for _ in range(3)]
    assert results == [True, True, False]


async def test_hit_window_with_zero_limit_refuses(cache_backend: CacheBackend) -> None:
    assert await cache_backend.cache.hit_window("k", limit=0, window=10, now=NOW) is False


async def test_hit_window_is_exact_under_concurrency(cache_backend: CacheBackend) -> None:
    cache = cache_backend.cache
    results = await asyncio.gather(
        *(cache.hit_window("burst", limit=3, window=60, now=NOW + i * 0.001) for i in range(50))
    )
    assert results.count(True) == 3


async def test_hit_window_is_exact_across_clients(cache_backend: CacheBackend) -> None:
    """Several processes share one limit: the count holds across their clients."""
    clients = [cache_backend.cache] + [await cache_backend.new_client() for _ in range(4)]
    results = await asyncio.gather(
        *(clients[i % 5].hit_window("shared", limit=7, window=60, now=NOW) for i in range(100))
    )
    assert results.count(True) == 7


async def test_unreachable_redis_is_service_unavailable() -> None:
    from herald.adapters.cache.redis import RedisCache

    cache = RedisCache("redis://127.0.0.1:1/0", timeout=1)
    try:
        with pytest.raises(ServiceUnavailable):
            await cache.add_if_absent("k", 1)
        with pytest.raises(ServiceUnavailable):
            await cache.hit_window("k", limit=1, window=1, now=NOW)
        with pytest.raises(ServiceUnavailable):
            await cache.delete("k")
        with pytest.raises(ServiceUnavailable):
            await cache.ping()
    finally:
        await cache.close()


async def test_redis_keys_carry_the_prefix(cache_backend: CacheBackend) -> None:
    if cache_backend.name != "redis":
        pytest.skip("key layout is Redis-specific")
    from redis import asyncio as aioredis

    from herald.adapters.cache.redis import RedisCache
    from tests.contract.conftest import REDIS_URL

    cache = cache_backend.cache
    assert isinstance(cache, RedisCache)
    await cache.add_if_absent("dedup:x", 30)
    await cache.hit_window("rate:x", limit=5, window=60, now=NOW)
    raw = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await raw.exists(cache.prefix + "dedup:x", cache.prefix + "rate:x") == 2
        ttl = await raw.pttl(cache.prefix + "rate:x")
        assert 0 < ttl <= 60_000  # the window key expires with its window
    finally:
        await raw.aclose()
    assert RedisCache.__init__.__kwdefaults__["prefix"] == "herald:"


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "herald.adapters.cache.redis", raising=False)
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(ConfigurationError, match=r"pip install 'herald\[redis\]'"):
        importlib.import_module("herald.adapters.cache.redis")
