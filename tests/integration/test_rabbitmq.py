"""Issue 5 on a real RabbitMQ: the outbox through broker outages, events from the exchange
(poison messages included), and a PostgreSQL + Redis + RabbitMQ herald end to end.

Broker outages are made with a TCP proxy in front of the shared broker (``tests/support``):
cutting it resets this herald's connections and refuses new ones, like a stopped broker, without
disturbing anybody else using RabbitMQ. Every test uses its own queue-name prefix.
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

import aio_pika
import orjson
import pytest
from structlog.testing import capture_logs

from herald.adapters.events_amqp import AmqpEventConsumer
from herald.bootstrap import build
from herald.domain.errors import ServiceUnavailable, ValidationError
from herald.testing import RecordingProvider
from tests.contract.conftest import REDIS_URL, pg_execute, pg_url_for, require_postgres
from tests.support.herald import ALL_ROLES, make_settings, running_herald
from tests.support.rabbitmq import (
    RABBITMQ_URL,
    delete_everything,
    get_messages,
    queue_message_count,
    require_rabbitmq,
    unique_prefix,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.waits import MAIL, add_user, eventually

pytestmark = pytest.mark.services


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    await require_rabbitmq()
    p = unique_prefix()
    try:
        yield p
    finally:
        await delete_everything(p)


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    target = urlsplit(RABBITMQ_URL)
    p = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5672).start()
    try:
        yield p
    finally:
        await p.close()


def via(proxy: TcpProxy) -> str:
    parts = urlsplit(RABBITMQ_URL)
    return parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}").geturl()


async def publish_event(prefix: str, body: bytes, routing_key: str, message_id: str | None = None) -> None:
    conn = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{prefix}.events")
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key,
        )
    finally:
        await conn.close()


# The outbox through broker outages --------------------------------------------------------------


@pytest.mark.parametrize("down_at_start", [True, False], ids=["down-at-start", "down-mid-run"])
async def test_broker_outage_still_accepts_and_delivers_everything_once_it_is_back(
    tmp_path: Path, prefix: str, proxy: TcpProxy, down_at_start: bool
) -> None:
    rec = RecordingProvider("recording")
    settings = make_settings(
        tmp_path,
        queue={"url": via(proxy), "prefix": prefix},
        channels={"email": {"providers": ["recording"]}},
    )
    if down_at_start:
        await proxy.cut()  # the relay and the workers start against a closed port
    async with running_herald(settings, providers={"recording": rec}) as h:
        await add_user(h)
        # Normal priority: critical and high ones routed here are sent by this process's own
        # senders without the broker (claimed routing), shown below.
        send = {"to": "u1", "content": {"email": MAIL}, "channels": ["email"], "priority": "normal"}
        before = 0
        if not down_at_start:
            first = (await h.client.post("/v1/notifications", json=send)).json()["id"]
            await h.wait_final(first)
            before = 1
            await proxy.cut()  # connections reset, new ones refused

        started = time.monotonic()
        ids = []
        for _ in range(20):
            r = await h.client.post("/v1/notifications", json=send)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        assert time.monotonic() - started < 5, "accepting must not wait for the broker"

        async def waiting_in_outbox() -> bool:
            depth = sum(n for _, _, n in await h.container.store.queue_depth())
            return depth == 20 and await h.container.store.outbox_next_due() is not None

        await eventually(waiting_in_outbox)  # routed, committed, waiting for the broker
        await asyncio.sleep(0.5)
        assert len(rec.sent) == before
        # A critical one is routed into a lane this process sends: written claimed, sent at
        # once, broker or not.
        r = await h.client.post("/v1/notifications", json=send | {"priority": "critical"})
        body = await h.wait_final(r.json()["id"], timeout=10)
        assert [d["status"] for d in body["deliveries"]] == ["sent"]
        assert len(rec.sent) == before + 1

        await proxy.restore()
        for nid in ids:
            body = await h.wait_final(nid, timeout=30)
            assert [d["status"] for d in body["deliveries"]] == ["sent"]
        sent = Counter(m.delivery_id for m in rec.sent)
        assert len(sent) == 21 + before and max(sent.values()) == 1, "lost or duplicated"
        assert await h.container.store.outbox_next_due() is None


async def test_a_worker_that_dies_after_the_ack_is_covered_by_its_lease(tmp_path: Path, prefix: str) -> None:
    """Claimed (message acked) and then the worker vanishes: the lease expires, the scheduler puts
    the delivery back to retrying, the outbox publishes it again, another worker sends it."""
    rec = RecordingProvider("recording")
    settings = make_settings(
        tmp_path,
        queue={"url": RABBITMQ_URL, "prefix": prefix, "lease_seconds": 1},
        channels={"email": {"providers": ["recording"]}},
    )
    async with running_herald(settings, providers={"recording": rec}, roles=frozenset({"router"})) as h:
        await add_user(h)
        r = await h.client.post("/v1/notifications", json={"to": "u1", "content": {"email": MAIL}})
        nid = r.json()["id"]
        relay = h.container.relay
        assert relay is not None
        await eventually(lambda: _routed(h, nid))
        await relay.flush()
        queue = h.container.queue

        async def claim() -> list[Any]:
            await queue.wait("email", 0.05)
            return await queue.claim("email", owner="doomed", limit=10, max_rank=3, lease=1, now=time.time())

        (taken,) = await eventually(claim)  # acked: the broker has forgotten the message
        assert await queue_message_count(f"{prefix}.q.email.normal") == 0
        # ...and the worker dies here. The other roles take over:
        h.container.start_roles({"worker", "scheduler"})
        body = await h.wait_final(nid, timeout=15)
        (d,) = body["deliveries"]
        assert d["status"] == "sent" and d["id"] == taken.id
        assert [a["outcome"] for a in d["attempts"]] == ["lost", "ok"]
        assert [m.delivery_id for m in rec.sent] == [taken.id]


async def _routed(h: Any, nid: str) -> bool:
    body = (await h.client.get(f"/v1/notifications/{nid}")).json()
    return bool(body.get("deliveries"))


# Events from the broker ---------------------------------------------------------------------------


async def test_poison_events_are_parked_with_a_reason_and_the_consumer_keeps_going(prefix: str) -> None:
    handled: list[tuple[dict[str, Any], str | None]] = []

    async def handle(payload: dict[str, Any], *, idempotency_key: str | None) -> None:
        if payload["type"] != "order_placed":  # as EventService does for a type without a rule
            raise ValidationError(f"no routing rule for event type {payload['type']!r}", field="type")
        handled.append((payload, idempotency_key))

    consumer = AmqpEventConsumer(RABBITMQ_URL, handle, prefix=prefix)
    await consumer.start()
    try:
        await publish_event(prefix, b'{"to": "u1", "data": {', "order_placed", "bad-json")
        await publish_event(prefix, b"[1, 2, 3]", "order_placed", "not-an-object")
        await publish_event(prefix, b'{"to": "u1"}', "nobody_knows", "unknown-type")
        await publish_event(prefix, b'{"type": "order_shipped", "to": "u1"}', "order_placed", "mismatch")
        await publish_event(prefix, b'{"to": "u1", "data": {"order": 42}}', "order_placed", "good-1")

        await eventually(lambda: _ready(len(handled) == 1))
        payload, key = handled[0]
        assert payload == {"type": "order_placed", "to": "u1", "data": {"order": 42}} and key == "good-1"

        parked = await get_messages(f"{prefix}.events.invalid", expect=4)
        by_id = {m.message_id: m for m in parked}
        assert set(by_id) == {"bad-json", "not-an-object", "unknown-type", "mismatch"}
        assert by_id["bad-json"].body == b'{"to": "u1", "data": {'  # the original, untouched
        reasons = {k: str(m.headers["x-herald-reason"]) for k, m in by_id.items()}
        assert reasons["bad-json"].startswith("invalid JSON")
        assert "JSON object" in reasons["not-an-object"]
        assert "no routing rule for event type 'nobody_knows'" in reasons["unknown-type"]
        assert "differs from the routing key" in reasons["mismatch"]
        assert by_id["unknown-type"].headers["x-herald-routing-key"] == "nobody_knows"
        assert (consumer.handled, consumer.rejected) == (1, 4)
        assert await queue_message_count(f"{prefix}.events.ingest") == 0  # all acked
    finally:
        await consumer.close()


async def test_event_is_retried_in_place_while_the_store_is_down(prefix: str) -> None:
    calls: list[str | None] = []

    async def handle(payload: dict[str, Any], *, idempotency_key: str | None) -> None:
        calls.append(idempotency_key)
        if len(calls) <= 2:
            raise ServiceUnavailable("database unavailable: OperationalError")

    consumer = AmqpEventConsumer(RABBITMQ_URL, handle, prefix=prefix, retry_pause=0.05)
    await consumer.start()
    try:
        await publish_event(prefix, b'{"to": "u1"}', "order_placed", "k-1")
        await eventually(lambda: _ready(consumer.handled == 1))
        assert calls == ["k-1", "k-1", "k-1"] and consumer.rejected == 0
        assert await queue_message_count(f"{prefix}.events.invalid") == 0
    finally:
        await consumer.close()


async def _ready(value: bool) -> bool:
    return value


# PostgreSQL + Redis + RabbitMQ, end to end --------------------------------------------------------


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    require_postgres()
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_postgres_redis_rabbitmq_deliver_every_notification_and_event_exactly_once(
    tmp_path: Path, prefix: str, pg_schema: str
) -> None:
    from redis import asyncio as aioredis

    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except Exception as exc:
        from tests.contract.conftest import service_missing

        service_missing(f"Redis at {REDIS_URL}", str(exc))
    finally:
        await redis.aclose()

    email, sms = RecordingProvider("rec_email"), RecordingProvider("rec_sms")
    providers = {"rec_email": email, "rec_sms": sms}
    settings = make_settings(
        tmp_path,
        database={"url": pg_url_for(pg_schema)},
        cache={"url": REDIS_URL},
        queue={"url": RABBITMQ_URL, "prefix": prefix},
        channels={"email": {"providers": ["rec_email"]}, "sms": {"providers": ["rec_sms"]}},
        scheduler={"leader_ttl_seconds": 2},
    )
    n_users, n_notes, n_events = 20, 300, 60
    with capture_logs() as logs:
        async with running_herald(settings, providers=providers) as h:
            # A second worker/scheduler process on the same database, cache and broker.
            other = await build(settings, providers=providers)
            other.start_roles(set(ALL_ROLES))
            try:
                for i in range(n_users):
                    r = await h.client.put(
                        f"/v1/users/u{i}", json={"email": f"u{i}@example.com", "phone": f"+336123456{i:02d}"}
                    )
                    assert r.status_code == 200, r.text
                template = {
                    "category": "transactional",
                    "channels": {
                        "email": {"subject": "Order {{ data.order }}", "text": "ok"},
                        "sms": {"text": "ok"},
                    },
                }
                assert (await h.client.put("/v1/templates/order", json=template)).status_code == 200
                rule = {"template": "order", "channels": ["email", "sms"]}
                assert (await h.client.put("/v1/rules/order_placed", json=rule)).status_code == 200

                priorities = ["critical", "high", "normal", "low"]
                notes = [
                    {
                        "to": f"u{i % n_users}",
                        "content": {"email": MAIL, "sms": {"text": "hi"}},
                        "channels": ["email", "sms"],
                        "priority": priorities[i % 4],
                        "category": "system",
                    }
                    for i in range(n_notes)
                ]
                for i in range(0, n_notes, 100):
                    r = await h.client.post(
                        "/v1/notifications/batch", json={"notifications": notes[i : i + 100]}
                    )
                    assert r.json()["accepted"] == 100, r.text
                for i in range(n_events):
                    body = {"to": f"u{i % n_users}", "data": {"order": i}}
                    await publish_event(prefix, orjson.dumps(body), "order_placed", f"order-{i}")
                for i in range(5):  # the producer retried: same message ids, nothing new
                    body = {"to": f"u{i % n_users}", "data": {"order": i}}
                    await publish_event(prefix, orjson.dumps(body), "order_placed", f"order-{i}")

                expected = (n_notes + n_events) * 2

                async def all_sent() -> bool:
                    return len(email.sent) + len(sms.sent) >= expected

                await eventually(all_sent, timeout=60)
                await asyncio.sleep(1.0)  # anything extra (a duplicate) would show up now
                sent = Counter(m.delivery_id for m in email.sent + sms.sent)
                assert len(sent) == expected and max(sent.values()) == 1, "lost or duplicated"
                counts = Counter()
                for channel, status, _provider, n in await h.container.store.delivery_counts():
                    counts[(channel, status)] += n
                assert counts == {("email", "sent"): expected // 2, ("sms", "sent"): expected // 2}
                assert await h.container.store.outbox_next_due() is None
                assert await queue_message_count(f"{prefix}.events.invalid") == 0
            finally:
                await other.stop()
    # Two scheduler roles, one leading: one of them took the lease. On a loaded machine a late
    # renewal lets the lease lapse and it is taken again (by either): that is the lease working,
    # not a second leader (one leader at a time is tests/unit/test_leader.py's, on a fake clock).
    leaders = [e for e in logs if e["event"] == "scheduler.leader_acquired"]
    assert leaders, "no scheduler took the lease"
    lapsed = [e for e in logs if e["event"] in ("scheduler.leader_lost", "scheduler.leader_released")]
    assert len(leaders) <= len(lapsed) + 1, (leaders, lapsed)  # taken again only after it lapsed


async def test_a_message_that_keeps_coming_back_is_dead_lettered_then_rescheduled(
    tmp_path: Path, prefix: str
) -> None:
    """x-delivery-limit: a message whose consumers keep failing it goes to the channel's
    dead-letter queue (at-least-once); herald logs it and publishes the delivery again later."""
    from herald.adapters.queue.amqp import AmqpQueue
    from herald.adapters.queue.outbox_relay import OutboxRelay
    from herald.bootstrap import SystemClock
    from herald.testing import memory_store
    from tests.contract.conftest import seed

    store = memory_store()
    store.outbox = True
    await store.start()
    queue = AmqpQueue(RABBITMQ_URL, store, prefix=prefix, delivery_limit=1, dead_letter_delay=30)
    try:
        now = time.time()
        (d,) = await seed(store, {"due_at": now}, now=now)
        assert await OutboxRelay(store, queue.publish, SystemClock()).flush() == 1

        # A consumer that takes the message and dies (here: nacks it back) twice.
        conn = await aio_pika.connect(RABBITMQ_URL)
        channel = await conn.channel()
        lane = await channel.declare_queue(f"{prefix}.q.email.normal", passive=True)
        for _ in range(2):
            message = None
            while message is None:
                message = await lane.get(fail=False)
            assert message.body.decode() == d.id
            await message.nack(requeue=True)
        await conn.close()

        with capture_logs() as logs:
            await queue.wait("email", 0.01)  # starts the consumers, the dead-letter one among them

            async def rescheduled() -> bool:
                return await store.outbox_next_due() is not None

            await eventually(rescheduled)
        due = await store.outbox_next_due()
        assert due is not None and due >= now + 29
        (event,) = [e for e in logs if e["event"] == "queue.dead_lettered"]
        assert event["delivery_id"] == d.id and event["reason"] == "delivery_limit"
        assert await queue_message_count(f"{prefix}.dlq.email") == 0
    finally:
        await queue.close()
        await store.close()


async def test_a_batch_of_ids_is_a_few_messages_acked_only_once_all_their_ids_are_claimed(
    tmp_path: Path, prefix: str
) -> None:
    """The relay publishes a lane's due rows 50 ids a message. A claim may take part of a
    message; the message is acked only when all its ids are claimed, so a worker that dies
    holding a half-claimed message hands its unclaimed ids to the next one and nothing twice."""
    from herald.adapters.queue.amqp import AmqpQueue
    from herald.adapters.queue.outbox_relay import OutboxRelay
    from herald.bootstrap import SystemClock
    from herald.testing import memory_store
    from tests.contract.conftest import seed

    store = memory_store()
    store.outbox = True
    await store.start()
    lane = f"{prefix}.q.email.normal"
    first = AmqpQueue(RABBITMQ_URL, store, prefix=prefix, ids_per_message=50, early=0.0)
    second = AmqpQueue(RABBITMQ_URL, store, prefix=prefix, ids_per_message=50, early=0.0)
    try:
        now = time.time()
        ds = await seed(store, *({"due_at": now - 200 + i} for i in range(120)), now=now)
        assert await OutboxRelay(store, first.publish, SystemClock()).flush() == 120
        assert await queue_message_count(lane) == 3  # 50 + 50 + 20 ids
        assert first.published["email"] == 120

        async def claim(q: AmqpQueue, limit: int, arriving: int) -> list[str]:
            await q.wait("email", 0)
            deadline = time.monotonic() + 30
            while q.received["email"] < arriving:
                assert time.monotonic() < deadline, "the messages did not reach the consumer"
                await asyncio.sleep(0.01)
            got = await q.claim("email", owner="w", limit=limit, max_rank=3, lease=30, now=time.time())
            return [d.id for d in got]

        taken = await claim(first, 70, 120)  # all of message 1, 20 ids of message 2
        assert taken == [d.id for d in ds[:70]]
        await first.close()  # dies: message 1 was acked, messages 2 and 3 go back to the broker
        deadline = time.monotonic() + 30
        while await queue_message_count(lane) != 2:
            assert time.monotonic() < deadline, "the unacked messages did not come back"
            await asyncio.sleep(0.05)

        rest = await claim(second, 1000, 70)  # message 2 again (its 20 claimed ids are `sending`)
        assert rest == [d.id for d in ds[70:]]
        assert len(set(taken) | set(rest)) == 120 and not set(taken) & set(rest)
        deadline = time.monotonic() + 30
        while await queue_message_count(lane) != 0:  # all acked
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await first.close()
        await second.close()
        await store.close()


async def test_a_claim_takes_deliveries_routed_after_it_began(prefix: str) -> None:
    """Messages keep arriving while a claim runs. Each pass of the claim judges "due" by the
    time of that pass: judged by the time the call began, a delivery routed after it looked
    not yet due, went back to the outbox and was published again, round and round while the
    worker sent nothing."""
    from herald.adapters.queue.amqp import AmqpQueue
    from herald.adapters.queue.outbox_relay import OutboxRelay
    from herald.bootstrap import SystemClock
    from herald.testing import memory_store
    from tests.contract.conftest import seed

    store = memory_store()
    store.outbox = True
    await store.start()
    queue = AmqpQueue(RABBITMQ_URL, store, SystemClock(), prefix=prefix, early=0.5)
    try:
        now = time.time()
        ds = await seed(store, *({"due_at": now} for _ in range(10)), now=now)
        assert await OutboxRelay(store, queue.publish, SystemClock()).flush(now=now) == 10
        await queue.wait("email", 0)
        deadline = time.monotonic() + 30
        while queue.received["email"] < 10:
            assert time.monotonic() < deadline, "the messages did not reach the consumer"
            await asyncio.sleep(0.01)
        # The caller's time is from before these deliveries were due (a claim that began
        # earlier and is still taking messages).
        got = await queue.claim("email", owner="w", limit=100, max_rank=3, lease=30, now=now - 5)
        assert sorted(d.id for d in got) == sorted(d.id for d in ds)
        assert await store.outbox_next_due() is None  # nothing sent back to the outbox
    finally:
        await queue.close()
        await store.close()


async def test_a_process_consumes_only_the_lanes_it_sends(prefix: str) -> None:
    """``lanes``: a bulk sender (normal, low) never receives a critical or high message, so it
    cannot hold one unacked behind its backlog; the sender of the critical and high lanes gets
    those and nothing else. Both claim everything that is theirs, once."""
    from herald.adapters.queue.amqp import AmqpQueue
    from herald.adapters.queue.outbox_relay import OutboxRelay
    from herald.bootstrap import SystemClock
    from herald.domain.models import Priority
    from herald.testing import memory_store
    from tests.contract.conftest import seed

    store = memory_store()
    store.outbox = True
    await store.start()
    bulk = AmqpQueue(RABBITMQ_URL, store, prefix=prefix, early=0.0, lanes={"email": [2, 3]})
    urgent = AmqpQueue(RABBITMQ_URL, store, prefix=prefix, early=0.0, lanes={"email": [0, 1]})
    try:
        now = time.time()
        lanes = [Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW]
        ds = await seed(store, *({"priority": lanes[i % 4], "due_at": now - 10} for i in range(40)), now=now)
        await bulk.wait("email", 0)  # both consume before anything is published
        await urgent.wait("email", 0)
        deadline = time.monotonic() + 30
        while "email" not in bulk._lanes or "email" not in urgent._lanes:
            assert time.monotonic() < deadline, "consumers did not start"
            await asyncio.sleep(0.01)
        assert await OutboxRelay(store, bulk.publish, SystemClock()).flush(now=now) == 40
        deadline = time.monotonic() + 30
        while bulk.received["email"] + urgent.received["email"] < 40:
            assert time.monotonic() < deadline, "the messages did not reach the consumers"
            await asyncio.sleep(0.01)
        assert bulk.received["email"] == 20 and urgent.received["email"] == 20
        args: dict[str, Any] = {"owner": "w", "limit": 100, "lease": 30, "now": time.time()}
        # Asked for every lane, each still takes only what it consumes.
        from_bulk = await bulk.claim("email", max_rank=3, **args)
        from_urgent = await urgent.claim("email", max_rank=3, **args)
        assert {d.priority for d in from_bulk} == {Priority.NORMAL, Priority.LOW}
        assert {d.priority for d in from_urgent} == {Priority.CRITICAL, Priority.HIGH}
        assert sorted(d.id for d in from_bulk + from_urgent) == sorted(d.id for d in ds)
        for p in lanes:
            deadline = time.monotonic() + 30
            while await queue_message_count(f"{prefix}.q.email.{p.value}") != 0:  # all acked
                assert time.monotonic() < deadline, f"messages left in the {p.value} lane"
                await asyncio.sleep(0.05)
    finally:
        await bulk.close()
        await urgent.close()
        await store.close()


async def test_critical_deliveries_routed_here_are_claimed_without_the_broker(prefix: str) -> None:
    """``hand_over``: a critical delivery routed by this process is claimed by its own sender
    of that lane at once; the broker's message for it (its outbox row stays, in case this
    process dies first) later finds it claimed and is acked away. A lane this process does not
    consume, and a delivery not due yet, are left to the broker."""
    from herald.adapters.queue.amqp import AmqpQueue
    from herald.adapters.queue.outbox_relay import OutboxRelay
    from herald.bootstrap import SystemClock
    from herald.domain.models import Priority
    from herald.testing import memory_store
    from tests.contract.conftest import seed

    store = memory_store()
    store.outbox = True
    await store.start()
    urgent = AmqpQueue(RABBITMQ_URL, store, prefix=prefix, early=0.0, lanes={"email": [0, 1]})
    try:
        now = time.time()
        crit, later, low = await seed(
            store,
            {"priority": Priority.CRITICAL, "due_at": now - 1},
            {"priority": Priority.CRITICAL, "due_at": now + 3600},
            {"priority": Priority.LOW, "due_at": now - 1},
            now=now,
        )
        await urgent.wait("email", 0)
        deadline = time.monotonic() + 30
        while "email" not in urgent._lanes:
            assert time.monotonic() < deadline, "consumers did not start"
            await asyncio.sleep(0.01)
        urgent.hand_over([crit, later, low])
        assert urgent.handed_over["email"] == 1  # not the one due later, not the low one
        args: dict[str, Any] = {"owner": "w", "limit": 10, "max_rank": 3, "lease": 30}
        got = await urgent.claim("email", now=time.time(), **args)
        assert [d.id for d in got] == [crit.id]
        assert urgent.received["email"] == 0  # nothing came from the broker
        # The relay still publishes the due rows; the critical one's message finds it taken.
        assert await OutboxRelay(store, urgent.publish, SystemClock()).flush(now=time.time()) == 2
        deadline = time.monotonic() + 30
        while urgent.received["email"] < 1:
            assert time.monotonic() < deadline, "the critical message did not come"
            await asyncio.sleep(0.01)
        assert await urgent.claim("email", now=time.time(), **args) == []
        assert not urgent._lanes["email"].buffers[0]
        await urgent.close()  # an unacked message would go back to its queue now
        await asyncio.sleep(0.2)
        assert await queue_message_count(f"{prefix}.q.email.critical") == 0  # it was acked
        assert await queue_message_count(f"{prefix}.q.email.low") == 1  # left for a bulk sender
    finally:
        await urgent.close()
        await store.close()
