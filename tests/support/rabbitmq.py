"""RabbitMQ for tests: reachability (skip locally, fail under HERALD_REQUIRE_SERVICES=1), a unique
name prefix per test, cleanup of what a test declared, and a harness that makes the ``amqp``
queue checkable by the Queue contract.

A broker queue is asynchronous twice over: outbox rows reach the broker only when a relay
publishes them, and published messages reach a consumer a moment later. The contract's claims
("the critical one first", "nothing due yet") are about what is in the queue, so the harness
publishes what is due at the claim's ``now`` and waits until every message published for that
channel has reached one of the test's consumers before the claim runs. Nothing about the claim
itself is simulated: it is the adapter's own, against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from herald.adapters.queue.amqp import AmqpQueue, dead_letter_queue, lane_queue
from herald.adapters.queue.outbox_relay import OutboxRelay
from herald.adapters.store.sql import SqlStore
from herald.domain.models import Delivery, Priority
from herald.ports import OutboxItem
from herald.testing import FakeClock

RABBITMQ_URL = os.environ.get("HERALD_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
CHANNELS = ("email", "sms", "push", "in_app", "webhook", "chat")

_reachable: dict[str, str | None] = {}


async def require_rabbitmq() -> None:
    from tests.contract.conftest import service_missing

    if "rabbitmq" not in _reachable:
        import aio_pika

        try:
            conn = await aio_pika.connect(RABBITMQ_URL, timeout=3)
            await conn.close()
            _reachable["rabbitmq"] = None
        except Exception as exc:
            _reachable["rabbitmq"] = f"{type(exc).__name__}: {exc}".strip()
    why = _reachable["rabbitmq"]
    if why is not None:
        service_missing(f"RabbitMQ at {RABBITMQ_URL}", why)


def unique_prefix() -> str:
    return f"herald-test-{uuid.uuid4().hex[:12]}"


def queue_names(prefix: str, channels: Sequence[str] = CHANNELS) -> list[str]:
    names = [f"{prefix}.events.ingest", f"{prefix}.events.invalid"]
    for ch in channels:
        names.append(dead_letter_queue(prefix, ch))
        names.extend(lane_queue(prefix, ch, p.rank) for p in Priority)
    return names


async def delete_everything(prefix: str) -> None:
    """Delete the queues and the events exchange a test with ``prefix`` may have declared."""
    import aio_pika

    conn = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    try:
        channel = await conn.channel()
        for name in queue_names(prefix):
            try:
                await channel.queue_delete(name)
            except aio_pika.exceptions.ChannelClosed:
                channel = await conn.channel()  # a queue that never existed, on an old broker
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            await channel.exchange_delete(f"{prefix}.events")
    finally:
        await conn.close()


async def queue_message_count(name: str) -> int:
    """Ready messages in ``name`` (a passive declare)."""
    import aio_pika

    conn = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(name, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


async def get_messages(name: str, *, expect: int, timeout: float = 10.0) -> list[Any]:
    """Take (and ack) ``expect`` messages from ``name``; fail if they do not come in time."""
    import aio_pika

    conn = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    got: list[Any] = []
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(name, passive=True)
        deadline = time.monotonic() + timeout
        while len(got) < expect:
            message = await q.get(fail=False, no_ack=True)
            if message is None:
                assert time.monotonic() < deadline, f"only {len(got)} of {expect} messages in {name}"
                await asyncio.sleep(0.05)
                continue
            got.append(message)
        return got
    finally:
        await conn.close()


class AmqpHarness:
    """The test's relay and queues on one prefix, and the sync that makes claims deterministic."""

    def __init__(self, store: SqlStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.queues: list[AmqpQueue] = []
        self.published: Counter[str] = Counter()
        self._publisher: AmqpQueue | None = None
        self._lock = asyncio.Lock()

    async def new_queue(self, store: SqlStore | None = None) -> AmqpQueue:
        """Another worker process's queue (its own connection, consumers and buffers)."""
        store = store or self.store
        store.outbox = True
        q = AmqpQueue(RABBITMQ_URL, store, prefix=self.prefix, prefetch=1000, early=0.0)
        await q.start()
        self.queues.append(q)
        return q

    async def _publish(self, items: Sequence[OutboxItem]) -> None:
        if self._publisher is None:
            self._publisher = await self.new_queue()
        await self._publisher.publish(items)
        self.published.update(i.channel for i in items)

    async def sync(self, channel: str, now: float) -> None:
        """Publish what is due at ``now``; wait until the test's consumers have all of it."""
        async with self._lock:  # a concurrent sync's publishes count as published once done
            relay = OutboxRelay(self.store, self._publish, FakeClock(now))
            await relay.flush(now=now)
            deadline = time.monotonic() + 30
            while sum(q.received[channel] for q in self.queues) < self.published[channel]:
                assert time.monotonic() < deadline, "published messages did not reach the consumers"
                await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        for q in self.queues:
            await q.close()
        await delete_everything(self.prefix)


class SyncedAmqpQueue:
    """An AmqpQueue whose claims first :meth:`AmqpHarness.sync` (see the module docstring)."""

    def __init__(self, queue: AmqpQueue, harness: AmqpHarness) -> None:
        self.inner = queue
        self.harness = harness

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def claim(
        self,
        channel: str,
        *,
        owner: str,
        limit: int,
        max_rank: int,
        lease: float,
        now: float,
        min_rank: int = 0,
    ) -> list[Delivery]:
        await self.inner.wait(channel, 0)  # make sure this process consumes the channel
        deadline = time.monotonic() + 30
        while channel not in self.inner._lanes:  # consumers declared and registered
            assert time.monotonic() < deadline, "could not start consuming"
            await asyncio.sleep(0.005)
        await self.harness.sync(channel, now)
        return await self.inner.claim(
            channel, owner=owner, limit=limit, max_rank=max_rank, lease=lease, now=now, min_rank=min_rank
        )

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        await self.inner.extend(delivery_ids, owner=owner, until=until)

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        self.inner.wake(channel, top_rank)

    def wake_local(self, channel: str) -> None:
        self.inner.wake_local(channel)

    def hand_over(self, deliveries: Sequence[Delivery]) -> None:
        self.inner.hand_over(deliveries)

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        await self.inner.wait(channel, timeout, max_rank)
