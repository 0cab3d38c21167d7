"""Issue 21 on a real Kafka-protocol broker (Tansu, tests/support/kafka.py): events from a topic
accepted exactly once, parked when herald cannot accept them, committed only once accepted; the
``kafka://`` channel queue's lanes, commits and a broker that comes back empty.

Every test uses its own topic, group and queue prefix on the session's broker, except the one
that kills the broker (a private one).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from herald.adapters.events_kafka import KafkaEventConsumer
from herald.adapters.kafka_client import parse_kafka_url
from herald.adapters.queue.kafka import group_id, lane_topic
from herald.adapters.queue.outbox_relay import OutboxRelay
from herald.domain.errors import ServiceUnavailable
from herald.domain.models import Priority
from herald.ports import OutboxItem
from herald.testing import RecordingProvider
from tests.contract.conftest import NOW, PG_URL, pg_execute, require_postgres, seed
from tests.support.herald import Running, make_settings, running_herald
from tests.support.kafka import (
    KafkaHarness,
    TansuBroker,
    consume_all,
    group_offsets,
    produce,
    unique_name,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.waits import MAIL, add_user, eventually

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

TEMPLATE = {
    "category": "transactional",
    "channels": {"email": {"subject": "Order {{ data.order }}", "text": "ok"}},
}


def events_config(broker: TansuBroker, topic: str, group: str) -> dict[str, Any]:
    return {
        "kafka_url": broker.url,
        "kafka_topic": topic,
        "kafka_group": group,
        "kafka_partitions": 3,
        "kafka_session_timeout_seconds": 3,
    }


async def with_rule(h: Running) -> None:
    await add_user(h)
    assert (await h.client.put("/v1/templates/order", json=TEMPLATE)).status_code == 200
    rule = {"template": "order", "channels": ["email"]}
    assert (await h.client.put("/v1/rules/order_placed", json=rule)).status_code == 200


def event(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"type": "order_placed", "to": "u1", "data": {"order": i}, **extra})


async def committed_total(broker: TansuBroker, group: str, topic: str) -> int:
    return sum((await group_offsets(broker.bootstrap, group, [topic])).values())


# Events from Kafka ---------------------------------------------------------------------------------


async def test_events_are_accepted_exactly_once_and_lag_shows_in_readyz_and_metrics(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    topic, group = unique_name("events"), unique_name("group")
    rec = RecordingProvider("rec")
    settings = make_settings(
        tmp_path, channels={"email": {"providers": ["rec"]}}, events=events_config(kafka_broker, topic, group)
    )
    async with running_herald(settings, providers={"rec": rec}) as h:
        await with_rule(h)
        await eventually(
            lambda: _ready(h.container.kafka_events is not None and h.container.kafka_events.assigned != []),
            30,
        )
        keyed = [(f"order-{i}".encode(), event(i)) for i in range(150)]
        in_body = [
            (f"other-key-{i}".encode(), event(1000 + i, idempotency_key=f"body-{i}")) for i in range(20)
        ]
        await produce(kafka_broker.bootstrap, topic, keyed + in_body)
        # The producer retried: the same record keys, the same body keys (under other record keys).
        again = keyed[:30] + [
            (f"retry-{i}".encode(), event(1000 + i, idempotency_key=f"body-{i}")) for i in range(5)
        ]
        await produce(kafka_broker.bootstrap, topic, again)
        total = len(keyed) + len(in_body)

        await eventually(lambda: _ready(len(rec.sent) >= total), 60)
        await asyncio.sleep(1.0)  # a duplicate would show up now
        sent = Counter(m.delivery_id for m in rec.sent)
        assert len(sent) == total and max(sent.values()) == 1, "lost or duplicated"
        orders = sorted(int(m.content["subject"].split()[-1]) for m in rec.sent)
        assert orders == list(range(150)) + list(range(1000, 1020))

        produced = total + len(again)
        await eventually(lambda: _committed(kafka_broker, group, topic, produced), 30)
        consumer = h.container.kafka_events
        assert consumer is not None and consumer.parked == 0
        ready = (await h.client.get("/readyz")).json()
        (status,) = [k for k in ready["kafka"] if k["kind"] == "events"]
        assert status["state"] == "consuming" and status["group"] == group
        assert status["lag"] == 0 and status["accepted"] == produced
        metrics = (await h.client.get("/metrics")).text
        assert f'herald_kafka_consumer_lag{{group="{group}",topic="{topic}"}} 0.0' in metrics
        assert f'herald_kafka_consumer_state{{group="{group}",state="consuming"}} 1.0' in metrics


async def test_records_herald_cannot_accept_are_parked_with_their_reason_and_committed(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    topic, group = unique_name("events"), unique_name("group")
    rec = RecordingProvider("rec")
    settings = make_settings(
        tmp_path, channels={"email": {"providers": ["rec"]}}, events=events_config(kafka_broker, topic, group)
    )
    async with running_herald(settings, providers={"rec": rec}) as h:
        await with_rule(h)
        records: list[tuple[bytes | None, bytes]] = [
            (b"bad-json", b'{"type": "order_placed", "to": "u1", "data": {'),
            (b"not-an-object", b"[1, 2, 3]"),
            (b"unknown-type", orjson.dumps({"type": "nobody_knows", "to": "u1"})),
            (b"reused", event(1)),
        ]
        # Produced in order to one partition (the same key): the first "reused" is accepted
        # before the second, whose other body then reuses its key.
        for key, value in records:
            await produce(kafka_broker.bootstrap, topic, [(key, value)], headers=[("trace", key or b"")])
        await produce(kafka_broker.bootstrap, topic, [(b"reused", event(2))])
        await produce(kafka_broker.bootstrap, topic, [(b"good", event(3))])

        parked = await consume_all(kafka_broker.bootstrap, f"{topic}.invalid", expect=4, timeout=30)
        by_key = {r.key: r for r in parked}
        assert set(by_key) == {b"bad-json", b"not-an-object", b"unknown-type", b"reused"}
        assert by_key[b"bad-json"].value == records[0][1]  # the original, untouched
        reasons = {k: dict(r.headers)["x-herald-reason"].decode() for k, r in by_key.items()}
        assert reasons[b"bad-json"].startswith("invalid JSON")
        assert "JSON object" in reasons[b"not-an-object"]
        assert "no routing rule for event type 'nobody_knows'" in reasons[b"unknown-type"]
        assert "idempotency" in reasons[b"reused"].lower()
        assert by_key[b"bad-json"].value == records[0][1]
        assert dict(by_key[b"not-an-object"].headers)["trace"] == b"not-an-object"  # headers kept
        assert dict(by_key[b"unknown-type"].headers)["x-herald-topic"] == topic.encode()

        await eventually(lambda: _ready(len(rec.sent) == 2), 30)  # "reused" (the first) and "good"
        await eventually(lambda: _committed(kafka_broker, group, topic, 6), 30)  # parked ones too
        consumer = h.container.kafka_events
        assert consumer is not None and (consumer.accepted, consumer.parked) == (2, 4)


async def test_a_restart_resumes_at_the_committed_offsets(kafka_broker: TansuBroker) -> None:
    topic, group = unique_name("events"), unique_name("group")
    conn = parse_kafka_url(kafka_broker.url, key="test")
    seen: list[str | None] = []

    async def handle(payload: dict[str, Any], *, idempotency_key: str | None) -> None:
        seen.append(idempotency_key)

    async def run_until(n: int, committed: int) -> None:
        consumer = KafkaEventConsumer(conn, handle, topic=topic, group=group, partitions=3, session_timeout=3)
        stopping = asyncio.Event()
        task = asyncio.create_task(consumer.run(stopping))
        try:
            await eventually(lambda: _ready(len(seen) >= n), 30)
            await eventually(lambda: _committed(kafka_broker, group, topic, committed), 30)
        finally:
            stopping.set()
            await asyncio.wait_for(task, 15)

    await produce(kafka_broker.bootstrap, topic, [(f"a-{i}".encode(), event(i)) for i in range(40)])
    await run_until(40, 40)
    assert sorted(seen) == sorted(f"a-{i}" for i in range(40))
    await produce(kafka_broker.bootstrap, topic, [(f"b-{i}".encode(), event(i)) for i in range(25)])
    seen.clear()
    await run_until(25, 65)
    await asyncio.sleep(0.5)
    assert sorted(seen) == sorted(f"b-{i}" for i in range(25)), "read again what was committed"


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    require_postgres()
    target = urlsplit(PG_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    yield proxy
    await proxy.close()


@pytest.fixture
def pg_schema() -> Any:
    require_postgres()
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


def pg_url_via(port: int, schema: str) -> str:
    parts = urlsplit(PG_URL)
    user = parts.username or "postgres"
    return (
        f"postgresql://{user}@127.0.0.1:{port}{parts.path}"
        f"?options=-csearch_path%3D{schema}&application_name={schema}&connect_timeout=2"
    )


async def test_with_the_database_down_nothing_is_committed_then_everything_is_accepted(
    tmp_path: Path, kafka_broker: TansuBroker, pg_proxy: TcpProxy, pg_schema: str
) -> None:
    topic, group = unique_name("events"), unique_name("group")
    rec = RecordingProvider("rec")
    settings = make_settings(
        tmp_path,
        database={"url": pg_url_via(pg_proxy.port, pg_schema), "pool_size": 4},
        channels={"email": {"providers": ["rec"]}},
        events=events_config(kafka_broker, topic, group),
    )
    async with running_herald(settings, providers={"rec": rec}) as h:
        await with_rule(h)
        await produce(kafka_broker.bootstrap, topic, [(f"first-{i}".encode(), event(i)) for i in range(10)])
        await eventually(lambda: _committed(kafka_broker, group, topic, 10), 30)
        consumer = h.container.kafka_events
        assert consumer is not None

        await pg_proxy.cut()
        await produce(
            kafka_broker.bootstrap, topic, [(f"during-{i}".encode(), event(100 + i)) for i in range(20)]
        )
        await eventually(lambda: _ready(consumer.state == "paused"), 30)
        ready = await h.client.get("/readyz")
        assert ready.status_code == 503  # the database is down
        await asyncio.sleep(2.0)  # retries meanwhile
        assert await committed_total(kafka_broker, group, topic) == 10, (
            "committed while the database was down"
        )
        assert consumer.parked == 0

        await pg_proxy.restore()
        await eventually(lambda: _committed(kafka_broker, group, topic, 30), 60)
        await eventually(lambda: _ready(len(rec.sent) >= 30), 30)
        await asyncio.sleep(0.5)
        sent = Counter(m.delivery_id for m in rec.sent)
        assert len(sent) == 30 and max(sent.values()) == 1
        assert consumer.state == "consuming" and consumer.parked == 0
        ready = (await h.client.get("/readyz")).json()
        assert [k["state"] for k in ready["kafka"] if k["kind"] == "events"] == ["consuming"]


# The kafka:// channel queue -----------------------------------------------------------------------


async def test_a_worker_consumes_only_its_lanes_and_commits_only_claimed_records(
    kafka_broker: TansuBroker,
) -> None:
    from herald.testing import memory_store

    store = memory_store()
    await store.start()
    store.outbox = True
    harness = KafkaHarness(store, kafka_broker, unique_name("q"))
    prefix = harness.prefix
    try:
        urgent = await harness.new_queue(consume=False)
        urgent.lanes = {"email": (0, 1)}  # herald worker --lanes critical,high
        bulk = await harness.new_queue(consume=False)
        bulk.lanes = {"email": (2, 3)}  # herald worker --lanes normal,low
        await asyncio.gather(urgent._consume("email"), bulk._consume("email"))
        ds = await seed(store, *({"priority": p} for p in Priority for _ in range(5)))
        by_rank = Counter(d.priority.rank for d in ds)
        await OutboxRelay(store, urgent.publish, _Clock(NOW)).flush(now=NOW)

        await eventually(lambda: _ready(urgent.received["email"] == 10 and bulk.received["email"] == 10), 30)
        assert by_rank == {0: 5, 1: 5, 2: 5, 3: 5}
        # Each process holds only the records of its lanes; the groups are apart.
        assert {e.tp.topic for b in urgent._lanes["email"].buffers for e in b} == {
            lane_topic(prefix, "email", 0),
            lane_topic(prefix, "email", 1),
        }
        assert {e.tp.topic for b in bulk._lanes["email"].buffers for e in b} == {
            lane_topic(prefix, "email", 2),
            lane_topic(prefix, "email", 3),
        }

        # The store down: the claim fails, its records stay buffered and nothing is committed.
        real = store.claim_ids

        async def down(*a: Any, **kw: Any) -> Any:
            raise ServiceUnavailable("database unavailable (test)")

        store.claim_ids = down  # type: ignore[method-assign]
        with pytest.raises(ServiceUnavailable):
            await urgent.claim("email", owner="w", limit=100, max_rank=3, lease=30, now=NOW)
        lanes = [lane_topic(prefix, "email", r) for r in range(4)]
        assert await group_offsets(kafka_broker.bootstrap, group_id(prefix, "email", (0, 1)), lanes) == {}
        store.claim_ids = real  # type: ignore[method-assign]

        got = await urgent.claim("email", owner="w", limit=100, max_rank=3, lease=30, now=NOW)
        assert sorted(d.priority.rank for d in got) == [0] * 5 + [1] * 5
        offsets = await group_offsets(kafka_broker.bootstrap, group_id(prefix, "email", (0, 1)), lanes)
        assert {t for t, _ in offsets} == {lane_topic(prefix, "email", 0), lane_topic(prefix, "email", 1)}
        assert sum(offsets.values()) == 2  # one record per lane, each committed once claimed
        got = await bulk.claim("email", owner="b", limit=100, max_rank=3, lease=30, now=NOW)
        assert sorted(d.priority.rank for d in got) == [2] * 5 + [3] * 5

        # A record published again (a relay that died before deleting its rows) finds its
        # deliveries claimed: skipped, and committed.
        crit = [d for d in ds if d.priority.rank == 0]
        await urgent.publish([OutboxItem(0, d.id, "email", 0, NOW) for d in crit])
        await eventually(lambda: _ready(urgent.received["email"] == 15), 30)
        assert await urgent.claim("email", owner="w2", limit=100, max_rank=3, lease=30, now=NOW) == []
        offsets = await group_offsets(kafka_broker.bootstrap, group_id(prefix, "email", (0, 1)), lanes)
        assert sum(offsets.values()) == 3
        status = {s["group"]: s for s in urgent.status() + bulk.status()}
        assert status[group_id(prefix, "email", (0, 1))]["lag"] == 0
        assert status[group_id(prefix, "email", (2, 3))]["state"] == "consuming"
    finally:
        await harness.aclose()
        await store.close()


class _Clock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


async def test_the_broker_killed_and_restarted_empty_herald_keeps_serving(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path).start()
    try:
        topic, group = unique_name("events"), unique_name("group")
        rec = RecordingProvider("rec")
        settings = make_settings(
            tmp_path,
            queue={
                "url": broker.url,
                "prefix": unique_name("q"),
                "kafka_partitions": 2,
                "kafka_session_timeout_seconds": 3,
            },
            channels={"email": {"providers": ["rec"]}},
            events=events_config(broker, topic, group),
        )
        send = {"to": "u1", "content": {"email": MAIL}, "channels": ["email"], "priority": "normal"}
        async with running_herald(settings, providers={"rec": rec}) as h:
            await with_rule(h)
            first = [(await h.client.post("/v1/notifications", json=send)).json()["id"] for _ in range(5)]
            for nid in first:
                await h.wait_final(nid, timeout=30)
            await produce(broker.bootstrap, topic, [(b"before", event(1))])
            await eventually(lambda: _ready(len(rec.sent) == 6), 30)

            broker.kill()
            started = time.monotonic()
            during = []
            for _ in range(10):
                r = await h.client.post("/v1/notifications", json=send)
                assert r.status_code == 202, r.text
                during.append(r.json()["id"])
            assert time.monotonic() - started < 10, "accepting must not wait for the broker"
            await asyncio.sleep(2.0)
            broker.start()  # the same port, empty: no topics, no groups, no offsets

            for nid in during:
                body = await h.wait_final(nid, timeout=90)
                assert [d["status"] for d in body["deliveries"]] == ["sent"]
            await produce(broker.bootstrap, topic, [(b"after", event(2))])
            try:
                await eventually(lambda: _ready(len(rec.sent) >= 17), 60)
            except AssertionError:
                consumer = h.container.kafka_events
                assert consumer is not None
                raise AssertionError(f"the event after the restart: {consumer.status()}") from None
            await asyncio.sleep(0.5)
            sent = Counter(m.delivery_id for m in rec.sent)
            assert len(sent) == 17 and max(sent.values()) == 1, "lost or duplicated"
            assert await h.container.store.outbox_next_due() is None
    finally:
        broker.stop()


async def _ready(value: bool) -> bool:
    return value


async def _committed(broker: TansuBroker, group: str, topic: str, n: int) -> bool:
    return await committed_total(broker, group, topic) >= n
