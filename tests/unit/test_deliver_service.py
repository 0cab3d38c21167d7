"""DeliveryService on the in-memory store, a fake clock and a recording provider: claim, send,
classify and record — the outcome class alone decides sent, retrying (on the schedule),
failed, or a dead address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.bootstrap import build_catalog
from herald.config import Settings
from herald.domain.errors import DeadAddressError, PermanentDeliveryError, TransientDeliveryError
from herald.domain.models import (
    Delivery,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Outcome,
    Priority,
    Recipient,
    User,
    new_id,
)
from herald.services.deliver import ChannelPool, DeliveryService
from herald.services.route import RouterService
from herald.services.signing import Signer, UnsubscribeSigner
from herald.testing import FakeClock, RecordingProvider, memory_queue, memory_store

NOW = 1_800_000_000.0


@dataclass
class Delivering:
    store: SqlStore
    queue: SqlQueue
    clock: FakeClock
    provider: RecordingProvider
    router: RouterService
    service: DeliveryService

    async def send(self, **kw: Any) -> str:
        n = Notification(
            id=new_id("ntf"),
            status=NotificationStatus.ACCEPTED,
            recipients=[Recipient(user_id="ana")],
            template=None,
            template_version=None,
            content={"email": {"subject": "Hi", "text": "hello"}},
            data={},
            channels=["email"],
            category="transactional",
            priority=Priority.HIGH,
            recipients_total=1,
            created_at=self.clock.now(),
            **kw,
        )
        await self.store.create_notifications([n])
        await self.router.route_pending()
        return n.id

    async def delivery(self, nid: str) -> Delivery:
        (d,) = await self.store.get_deliveries(nid)
        return d


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (got := await check()):
        assert loop.time() < deadline, "condition not met"
        await asyncio.sleep(0.01)
    return got


@pytest.fixture
async def delivering() -> AsyncIterator[Delivering]:
    store, clock = memory_store(), FakeClock(NOW)
    await store.start()
    queue = memory_queue(store)
    await queue.start()
    catalog = build_catalog(Settings())
    provider = RecordingProvider("recording")
    pool = ChannelPool(channel="email", providers=[provider], concurrency=4, reserved_high=1)
    service = DeliveryService(store, queue, clock, catalog, {"email": pool}, idle_wait=0.05)
    router = RouterService(
        store, clock, catalog, queue.wake, UnsubscribeSigner(Signer(b"k" * 32), "https://herald.example.com")
    )
    await store.put_user(User(id="ana", email="ana@example.com"))
    running = asyncio.create_task(service.run())
    try:
        yield Delivering(store, queue, clock, provider, router, service)
    finally:
        await service.stop(grace=5)
        await running
        await queue.close()
        await store.close()


async def status_of(d: Delivering, nid: str, *statuses: DeliveryStatus) -> Delivery:
    async def check() -> Delivery | None:
        got = await d.delivery(nid)
        return got if got.status in statuses else None

    found: Delivery = await until(check)
    return found


async def test_an_accepted_send_is_sent_with_one_attempt(delivering: Delivering) -> None:
    nid = await delivering.send()
    d = await status_of(delivering, nid, DeliveryStatus.SENT)
    assert [m.address for m in delivering.provider.sent] == ["ana@example.com"]
    assert [(a.n, a.outcome, a.provider) for a in d.attempts] == [(1, Outcome.OK, "recording")]


async def test_a_transient_failure_retries_on_the_schedule(delivering: Delivering) -> None:
    delivering.provider.script([TransientDeliveryError("try later", code="451")])
    nid = await delivering.send()
    d = await status_of(delivering, nid, DeliveryStatus.RETRYING)
    assert d.attempts[0].outcome == Outcome.TRANSIENT and d.attempts[0].code == "451"
    # the schedule's second step is one minute, with at most 10% jitter
    assert d.due_at is not None and 54 <= d.due_at - NOW <= 66, d.due_at - NOW
    assert delivering.provider.calls == 1, "nothing is resent before it is due"


async def test_a_permanent_failure_fails_without_retrying(delivering: Delivering) -> None:
    delivering.provider.script([PermanentDeliveryError("refused", code="550")])
    nid = await delivering.send()
    d = await status_of(delivering, nid, DeliveryStatus.FAILED)
    assert [a.outcome for a in d.attempts] == [Outcome.PERMANENT]


async def test_a_dead_address_fails_and_is_suppressed(delivering: Delivering) -> None:
    delivering.provider.script([DeadAddressError("no such mailbox", code="550 5.1.1")])
    nid = await delivering.send()
    d = await status_of(delivering, nid, DeliveryStatus.FAILED)
    assert d.attempts[0].outcome == Outcome.DEAD_ADDRESS
    # the next send to the same address is not even tried
    again = await delivering.send()
    skipped = await status_of(delivering, again, DeliveryStatus.SKIPPED, DeliveryStatus.FAILED)
    assert skipped.reason is not None
    assert delivering.provider.calls == 1
