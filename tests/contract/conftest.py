"""Fixtures that run one contract suite over every adapter of a port.

Store and Queue run on ``memory`` (SQLite in memory, :func:`herald.testing.memory_store`),
``sqlite`` (a file) and ``postgres`` (a fresh schema per test in the ``test`` database, migrated
by the store itself). Cache runs on ``memory`` and ``redis`` (a fresh key prefix per test).

A service that does not answer skips its cases locally and fails them when
``HERALD_REQUIRE_SERVICES=1`` (CI), so a broken CI service never passes as "skipped".
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pytest

from herald.adapters.cache.memory import MemoryCache
from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore
from herald.domain.models import (
    Attempt,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Outcome,
    Priority,
    Recipient,
    User,
    new_id,
)
from herald.ports import Cache, RoutedBatch
from herald.testing import memory_store
from tests.conftest import REQUIRE_SERVICES

PG_URL = os.environ.get("HERALD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

NOW = 1_800_000_000.0
S = DeliveryStatus

_reachable: dict[str, str | None] = {}  # service -> None when reachable, else why not


def service_missing(service: str, why: str) -> NoReturn:
    message = f"{service} is not reachable ({why})"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and HERALD_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)


def require_postgres() -> None:
    if "postgres" not in _reachable:
        try:
            with _pg_admin() as conn:
                conn.execute("SELECT 1")
            _reachable["postgres"] = None
        except Exception as exc:
            _reachable["postgres"] = f"{type(exc).__name__}: {exc}".strip()
    why = _reachable["postgres"]
    if why is not None:
        service_missing(f"PostgreSQL at {PG_URL}", why)


def pg_execute(sql: str) -> list[tuple[Any, ...]]:
    with _pg_admin() as conn:
        cur = conn.execute(sql)
        return list(cur.fetchall()) if cur.description else []


def pg_url_for(schema: str) -> str:
    """The test database with ``schema`` first on the search path of every connection;
    application_name lets a test find (and kill) exactly these connections."""
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}&application_name={schema}"


# ---------------------------------------------------------------------------------------------
# Store and Queue
# ---------------------------------------------------------------------------------------------


@dataclass
class SqlBackend:
    """One store under test, and a way to open more connection pools onto the same data."""

    name: str
    store: SqlStore
    url: str | None  # None: the data lives in this process only (SQLite in memory)
    schema: str | None = None  # PostgreSQL: this test's schema and application_name
    _extra: list[SqlStore] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        return self.url is not None

    async def connect(self) -> SqlStore:
        """Another store on the same data with its own pool, as another process would have."""
        if self.url is None:
            return self.store
        other = SqlStore(Database(self.url))
        await other.start()
        self._extra.append(other)
        return other

    async def aclose(self) -> None:
        for other in self._extra:
            await other.close()
        await self.store.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlBackend]:
    kind: str = request.param
    schema: str | None = None
    if kind == "memory":
        b = SqlBackend(kind, memory_store(), None)
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'herald.db'}"
        b = SqlBackend(kind, SqlStore(Database(url)), url)
    else:
        require_postgres()
        # One schema per test: tests never see each other's rows, and the store's own
        # migration creates the tables in it (search_path set on every pooled connection).
        schema = f"herald_test_{uuid.uuid4().hex[:16]}"
        pg_execute(f'CREATE SCHEMA "{schema}"')
        url = pg_url_for(schema)
        b = SqlBackend(kind, SqlStore(Database(url)), url, schema)
    try:
        await b.store.start()
        yield b
    finally:
        await b.aclose()
        if schema is not None:
            pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(backend: SqlBackend) -> SqlStore:
    return backend.store


@pytest.fixture
async def queue(backend: SqlBackend) -> AsyncIterator[SqlQueue]:
    q = SqlQueue(backend.store.db)
    await q.start()  # PostgreSQL: LISTEN/NOTIFY wake-ups
    try:
        yield q
    finally:
        await q.close()


# Builders --------------------------------------------------------------------------------------


def make_notification(
    *,
    user_ids: tuple[str, ...] = ("u1",),
    priority: Priority = Priority.NORMAL,
    created_at: float = NOW,
    channels: list[str] | None = None,
    **kw: Any,
) -> Notification:
    return Notification(
        id=new_id("ntf"),
        status=NotificationStatus.ACCEPTED,
        recipients=[Recipient(user_id=u) for u in user_ids],
        template=None,
        template_version=None,
        content={"email": {"subject": "hi", "text": "hello"}},
        data={"code": "1234"},
        channels=channels,
        category="transactional",
        priority=priority,
        recipients_total=len(user_ids),
        created_at=created_at,
        **kw,
    )


def make_user(uid: str = "u1", at: float = NOW, **kw: object) -> User:
    return User(
        id=uid,
        email=f"{uid}@example.com",
        phone="+33612345678",
        locale="fr",
        timezone="Europe/Paris",
        data={"name": "Ana", "n": 1},
        chat={"slack": "U1"},
        updated_at=at,
        **kw,  # type: ignore[arg-type]
    )


def make_delivery(
    notification_id: str,
    *,
    user_id: str = "u1",
    channel: str = "email",
    status: DeliveryStatus = S.QUEUED,
    priority: Priority = Priority.NORMAL,
    due_at: float = NOW,
    expires_at: float | None = None,
    address: str | None = None,
    reason: str | None = None,
    delivery_id: str | None = None,
) -> Delivery:
    return Delivery(
        id=delivery_id or new_id("dlv"),
        notification_id=notification_id,
        user_id=user_id,
        channel=channel,
        status=status,
        priority=priority,
        category="transactional",
        address=address if address is not None else f"{user_id}@example.com",
        content={"subject": "hi", "text": f"hello {user_id}"},
        reason=reason,
        due_at=due_at,
        expires_at=expires_at,
    )


async def seed(store: SqlStore, *specs: dict[str, Any], now: float = NOW) -> list[Delivery]:
    """Write one routed notification with one delivery per spec (``make_delivery`` keywords)."""
    n = make_notification(user_ids=tuple(s.get("user_id", f"u{i}") for i, s in enumerate(specs)))
    await store.create_notifications([n])
    claimed = await store.claim_unrouted(owner="seeder", limit=1000, lease=60, now=now)
    assert n.id in {c.id for c in claimed}
    deliveries = [make_delivery(n.id, **({"user_id": f"u{i}"} | s)) for i, s in enumerate(specs)]
    ok = await store.save_routed(
        RoutedBatch(n.id, deliveries, recipients_done=len(specs), finished=True), owner="seeder", now=now
    )
    assert ok
    return deliveries


def result(
    d: Delivery,
    owner: str,
    status: DeliveryStatus,
    *,
    at: float = NOW,
    n: int = 1,
    outcome: Outcome | None = None,
    **kw: Any,
) -> DeliveryResult:
    if outcome is None:
        outcome = {S.SENT: Outcome.OK, S.RETRYING: Outcome.TRANSIENT}.get(status, Outcome.PERMANENT)
    return DeliveryResult(
        delivery_id=d.id,
        lease_owner=owner,
        new_status=status,
        channel=d.channel,
        attempt=Attempt(n=n, at=at, provider="smtp", outcome=outcome, code="250", latency_ms=3.0),
        **kw,
    )


async def settle(
    store: SqlStore, queue: SqlQueue, *moves: tuple[Delivery, DeliveryStatus], now: float = NOW, **kw: Any
) -> None:
    """Claim the given deliveries and record one attempt moving each to its status.

    Strict: nothing else may be claimable on their channels at ``now`` (seed the deliveries
    to settle before the ones to leave alone).
    """
    by_channel: dict[str, set[str]] = {}
    for d, _ in moves:
        by_channel.setdefault(d.channel, set()).add(d.id)
    for channel, ids in by_channel.items():
        claimed = await queue.claim(channel, owner="settler", limit=1000, max_rank=3, lease=30, now=now)
        assert {c.id for c in claimed} == ids, "settle() claimed other deliveries than the ones to settle"
    results = [result(d, "settler", st, at=now, **kw) for d, st in moves]
    assert await store.record_results(results, now=now) == []


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


@dataclass
class CacheBackend:
    name: str
    cache: Cache
    new_client: Callable[[], Awaitable[Cache]]  # another process's client on the same data


async def _redis_keys_cleanup(prefix: str) -> None:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def cache_backend(request: pytest.FixtureRequest) -> AsyncIterator[CacheBackend]:
    if request.param == "memory":
        mem = MemoryCache()

        async def same() -> Cache:
            return mem

        yield CacheBackend("memory", mem, same)
        await mem.close()
        return

    from herald.adapters.cache.redis import RedisCache
    from herald.domain.errors import ServiceUnavailable

    prefix = f"herald-test:{uuid.uuid4().hex[:12]}:"
    main = RedisCache(REDIS_URL, prefix=prefix)
    try:
        await main.ping()
    except ServiceUnavailable as exc:
        await main.close()
        service_missing(f"Redis at {REDIS_URL}", exc.detail)
    clients: list[RedisCache] = [main]

    async def another() -> Cache:
        c = RedisCache(REDIS_URL, prefix=prefix)
        clients.append(c)
        return c

    try:
        yield CacheBackend("redis", main, another)
    finally:
        for c in clients:
            await c.close()
        await _redis_keys_cleanup(prefix)
