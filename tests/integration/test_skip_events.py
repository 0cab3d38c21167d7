"""Every skipped delivery is told exactly once: one ``delivery.skipped`` event with its reason,
whoever skipped it (the router, the routed write's dedup, the sender at the claim or before a
retry, the scheduler's expiry sweep, a digest folding its items). On the in-memory store and a
fake clock; the sweep on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from herald.adapters.cache.memory import MemoryCache
from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore
from herald.bootstrap import build_catalog
from herald.config import Settings
from herald.domain.errors import TransientDeliveryError
from herald.domain.models import (
    Delivery,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Preferences,
    Priority,
    Reason,
    Recipient,
    User,
    new_id,
)
from herald.services.catalog import Catalog
from herald.services.deliver import ChannelPool, DeliveryService
from herald.services.digest import DigestService
from herald.services.route import RouterService
from herald.services.signing import Signer, UnsubscribeSigner
from herald.testing import FakeClock, RecordingProvider, memory_queue, memory_store
from tests.support.waits import eventually

NOW = 1_800_000_000.0
MAIL = {"subject": "Hi", "text": "hello"}
UNSUBSCRIBE = UnsubscribeSigner(Signer(b"k" * 32), "https://herald.example.com")


@dataclass
class Herald:
    store: SqlStore
    clock: FakeClock
    catalog: Catalog
    router: RouterService

    async def send(
        self,
        to: str = "ana",
        *,
        channels: list[str] | None = None,
        category: str = "transactional",
        **kw: Any,
    ) -> str:
        n = Notification(
            id=new_id("ntf"),
            status=NotificationStatus.ACCEPTED,
            recipients=[Recipient(user_id=to)],
            template=None,
            template_version=None,
            content={"email": MAIL, "sms": {"text": "hello"}},
            data={},
            channels=channels or ["email"],
            category=category,
            priority=kw.pop("priority", Priority.NORMAL),
            recipients_total=1,
            created_at=self.clock.now(),
            **kw,
        )
        await self.store.create_notifications([n])
        assert await self.router.route_pending() == 1
        return n.id

    async def delivery(self, nid: str) -> Delivery:
        (d,) = await self.store.get_deliveries(nid)
        return d


def router(store: SqlStore, clock: FakeClock, catalog: Catalog, **kw: Any) -> RouterService:
    return RouterService(store, clock, catalog, lambda _ch, _rank: None, UNSUBSCRIBE, **kw)


async def started(store: SqlStore, *, enabled: frozenset[str] | None = None, **kw: Any) -> Herald:
    await store.start()
    clock = FakeClock(NOW)
    catalog = build_catalog(Settings())
    if enabled is not None:
        catalog = replace(catalog, enabled_channels=enabled)
    await store.put_user(User(id="ana", email="ana@example.com", timezone="Europe/Paris"))
    return Herald(store, clock, catalog, router(store, clock, catalog, **kw))


@pytest.fixture
async def herald() -> AsyncIterator[Herald]:
    h = await started(memory_store(), cache=MemoryCache())
    try:
        yield h
    finally:
        await h.store.close()


def skips(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "delivery.skipped"]


def told_once(logs: list[dict[str, Any]], d: Delivery, reason: Reason) -> None:
    """Exactly one event, for ``d``, with the reason it was written with."""
    assert (d.status, d.reason) == (DeliveryStatus.SKIPPED, reason.value)
    events = skips(logs)
    assert [(e["delivery_id"], e["reason"]) for e in events] == [(d.id, reason.value)], events


# -- routing ---------------------------------------------------------------------------------------


async def test_user_deleted(herald: Herald) -> None:
    with capture_logs() as logs:
        nid = await herald.send("ghost")
    told_once(logs, await herald.delivery(nid), Reason.USER_DELETED)
    (event,) = skips(logs)
    assert event["notification_id"] == nid and event["channel"] == "email"


async def test_channel_disabled() -> None:
    h = await started(memory_store(), enabled=frozenset({"email"}))
    try:
        with capture_logs() as logs:
            nid = await h.send(channels=["sms"])
        told_once(logs, await h.delivery(nid), Reason.CHANNEL_DISABLED)
    finally:
        await h.store.close()


async def test_opted_out(herald: Herald) -> None:
    await herald.store.put_preferences(Preferences(user_id="ana", categories={"marketing": {"email": False}}))
    with capture_logs() as logs:
        nid = await herald.send(category="marketing")
    told_once(logs, await herald.delivery(nid), Reason.OPTED_OUT)


async def test_no_address(herald: Herald) -> None:
    with capture_logs() as logs:
        nid = await herald.send(channels=["sms"])
    told_once(logs, await herald.delivery(nid), Reason.NO_ADDRESS)


async def test_invalid_address(herald: Herald) -> None:
    await herald.store.suppress_address("email", "ana@example.com", "invalid_address", now=NOW)
    with capture_logs() as logs:
        nid = await herald.send()
    told_once(logs, await herald.delivery(nid), Reason.INVALID_ADDRESS)


async def test_rate_limited(herald: Herald) -> None:
    with capture_logs() as logs:
        for _ in range(3):  # marketing: 3 a day
            assert (
                await herald.delivery(await herald.send(category="marketing"))
            ).status == DeliveryStatus.QUEUED
        assert skips(logs) == []
        nid = await herald.send(category="marketing")
    told_once(logs, await herald.delivery(nid), Reason.RATE_LIMITED)


async def test_duplicate(herald: Herald) -> None:
    with capture_logs() as logs:
        first = await herald.send(dedup_key="order-1")
        assert skips(logs) == []
        again = await herald.send(dedup_key="order-1")
    assert (await herald.delivery(first)).status == DeliveryStatus.QUEUED
    told_once(logs, await herald.delivery(again), Reason.DUPLICATE)


async def test_a_fallback_chain_tells_each_channel_it_passed_over(herald: Herald) -> None:
    with capture_logs() as logs:
        nid = await herald.send(channels=["sms", "email"], fallback=True)
    by_channel = {d.channel: d for d in await herald.store.get_deliveries(nid)}
    assert by_channel["email"].status == DeliveryStatus.QUEUED
    told_once(logs, by_channel["sms"], Reason.NO_ADDRESS)


# -- sending ---------------------------------------------------------------------------------------


@pytest.fixture
async def sending(herald: Herald) -> AsyncIterator[tuple[Herald, RecordingProvider]]:
    queue = memory_queue(herald.store)
    await queue.start()
    provider = RecordingProvider("recording")
    pool = ChannelPool(channel="email", providers=[provider], concurrency=4, reserved_high=1)
    service = DeliveryService(
        herald.store, queue, herald.clock, herald.catalog, {"email": pool}, idle_wait=0.05
    )
    running = asyncio.create_task(service.run())
    try:
        yield herald, provider
    finally:
        await service.stop(grace=5)
        await running
        await queue.close()


async def final(h: Herald, nid: str) -> Delivery:
    async def check() -> Delivery | None:
        d = await h.delivery(nid)
        return d if d.status not in (DeliveryStatus.QUEUED, DeliveryStatus.SENDING) else None

    found: Delivery = await eventually(check)
    return found


async def test_expired_at_the_claim(sending: tuple[Herald, RecordingProvider]) -> None:
    h, provider = sending
    with capture_logs() as logs:
        nid = await h.send(expires_at=NOW - 1)  # routed late: written queued, never sent
        d = await final(h, nid)
    told_once(logs, d, Reason.EXPIRED)
    assert provider.calls == 0


async def test_expired_before_a_retry(sending: tuple[Herald, RecordingProvider]) -> None:
    h, provider = sending
    provider.script([TransientDeliveryError("try later", code="451")])
    with capture_logs() as logs:
        nid = await h.send(expires_at=NOW + 30)  # the next try would come a minute later
        d = await final(h, nid)
    told_once(logs, d, Reason.EXPIRED)
    assert provider.calls == 1


# -- the scheduler ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'herald.db'}"
        return
    from tests.contract.conftest import pg_execute, pg_url_for, require_postgres

    require_postgres()
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield pg_url_for(schema)
    finally:
        pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_expired_by_the_sweep(database_url: str) -> None:
    h = await started(SqlStore(Database(database_url)))
    try:
        with capture_logs() as logs:
            nid = await h.send(expires_at=NOW + 60)
            h.clock.advance(61)
            assert await h.store.expire_deliveries(now=h.clock.now()) == 1
            assert await h.store.expire_deliveries(now=h.clock.now()) == 0
        told_once(logs, await h.delivery(nid), Reason.EXPIRED)
    finally:
        await h.store.close()


async def test_digested(herald: Herald) -> None:
    await herald.store.put_preferences(Preferences(user_id="ana", digests={"marketing": "hourly"}))
    digests = DigestService(herald.store, herald.clock, herald.catalog, UNSUBSCRIBE)
    with capture_logs() as logs:
        nid = await herald.send(category="marketing")
        held = await herald.delivery(nid)
        assert (held.status, held.reason) == (DeliveryStatus.SCHEDULED, Reason.DIGEST.value)
        assert skips(logs) == []
        herald.clock.set(held.due_at)
        assert await digests.run_due() == ["email"]
        assert await digests.run_due() == []
    told_once(logs, await herald.delivery(nid), Reason.DIGESTED)
