"""The Queue port's contract, on every adapter: the ``sql`` queue, the ``amqp`` queue (RabbitMQ)
and the ``kafka`` queue (the Tansu broker, tests/support/kafka.py), the broker queues fed by
the store's outbox, each over memory, sqlite and postgres stores.

Deliveries are written through the Store port: for ``sql`` the deliveries table is the queue;
for ``amqp`` the store writes outbox rows, which the harness relays to a per-test set of
RabbitMQ queues (unique name prefix) before each claim (see ``tests/support/rabbitmq.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.domain.models import Attempt, DeliveryResult, Outcome, Priority
from herald.ports import Queue
from tests.contract.conftest import NOW, S, SqlBackend, pg_execute, result, seed, settle
from tests.support.kafka import KafkaHarness, SyncedKafkaQueue, TansuBroker
from tests.support.rabbitmq import AmqpHarness, SyncedAmqpQueue, require_rabbitmq, unique_prefix

P = Priority
MakeQueue = Callable[[SqlStore], Awaitable[Queue]]


@pytest.fixture(params=["sql", "amqp", "kafka"])
def queue_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_queue(
    queue_kind: str, backend: SqlBackend, request: pytest.FixtureRequest
) -> AsyncIterator[MakeQueue]:
    """Queues onto the backend's data, one per simulated process (its own pool, connection)."""
    if queue_kind == "sql":
        made: list[SqlQueue] = []

        async def make_sql(store: SqlStore) -> Queue:
            made.append(SqlQueue(store.db))
            return made[-1]

        yield make_sql
        for q in made:
            await q.close()
        return
    if queue_kind == "kafka":
        broker: TansuBroker = request.getfixturevalue("kafka_broker")
        kafka = KafkaHarness(backend.store, broker, unique_prefix())
        backend.store.outbox = True

        async def make_kafka(store: SqlStore) -> Queue:
            return SyncedKafkaQueue(await kafka.new_queue(store), kafka)

        try:
            yield make_kafka
        finally:
            await kafka.aclose()
        return
    await require_rabbitmq()
    harness = AmqpHarness(backend.store, unique_prefix())
    backend.store.outbox = True  # before the test writes anything

    async def make_amqp(store: SqlStore) -> Queue:
        return SyncedAmqpQueue(await harness.new_queue(store), harness)

    try:
        yield make_amqp
    finally:
        await harness.aclose()


@pytest.fixture
async def queue(queue_kind: str, backend: SqlBackend, make_queue: MakeQueue) -> AsyncIterator[Queue]:
    if queue_kind in ("amqp", "kafka"):
        yield await make_queue(backend.store)
        return
    q = SqlQueue(backend.store.db)
    await q.start()  # PostgreSQL: LISTEN/NOTIFY wake-ups
    try:
        yield q
    finally:
        await q.close()


def result_for(delivery_id: str, owner: str) -> DeliveryResult:
    return DeliveryResult(
        delivery_id=delivery_id,
        lease_owner=owner,
        new_status=S.SENT,
        attempt=Attempt(n=1, at=NOW, provider="smtp", outcome=Outcome.OK),
    )


async def claim_ids(queue: Queue, channel: str = "email", **kw: object) -> list[str]:
    args: dict[str, object] = {"owner": "w", "limit": 100, "max_rank": 3, "lease": 30, "now": NOW} | kw
    return [d.id for d in await queue.claim(channel, **args)]  # type: ignore[arg-type]


async def test_claim_takes_the_highest_lane_first(store: SqlStore, queue: Queue) -> None:
    low, normal, crit, high = await seed(
        store,
        {"priority": P.LOW, "due_at": NOW - 100},  # waited longest, still last
        {"priority": P.NORMAL, "due_at": NOW - 50},
        {"priority": P.CRITICAL, "due_at": NOW},
        {"priority": P.HIGH, "due_at": NOW - 10},
    )
    assert await claim_ids(queue, limit=1) == [crit.id]
    assert await claim_ids(queue, limit=2) == [high.id, normal.id]
    assert await claim_ids(queue, limit=2) == [low.id]
    assert await claim_ids(queue) == []


async def test_claim_orders_a_lane_by_due_time_and_respects_the_limit(store: SqlStore, queue: Queue) -> None:
    ds = await seed(store, *({"due_at": NOW - i} for i in range(5)))
    first = await claim_ids(queue, limit=3)
    assert first == [ds[4].id, ds[3].id, ds[2].id]
    assert await claim_ids(queue, limit=3) == [ds[1].id, ds[0].id]


async def test_claim_respects_max_rank(store: SqlStore, queue: Queue) -> None:
    crit, high, normal, low = await seed(
        store, {"priority": P.CRITICAL}, {"priority": P.HIGH}, {"priority": P.NORMAL}, {"priority": P.LOW}
    )
    # a worker slot reserved for the high lanes
    assert await claim_ids(queue, max_rank=1) == [crit.id, high.id]
    assert await claim_ids(queue, max_rank=1) == []
    assert await claim_ids(queue, max_rank=0) == []
    assert await claim_ids(queue, max_rank=3) == [normal.id, low.id]


async def test_claim_respects_min_rank(store: SqlStore, queue: Queue) -> None:
    crit, high, normal, low = await seed(
        store, {"priority": P.CRITICAL}, {"priority": P.HIGH}, {"priority": P.NORMAL}, {"priority": P.LOW}
    )
    # a bulk sender (server.worker_lanes = ["normal", "low"]) takes only its lanes...
    assert await claim_ids(queue, min_rank=2, limit=1) == [normal.id]
    assert await claim_ids(queue, min_rank=3) == [low.id]
    assert await claim_ids(queue, min_rank=2) == []
    # ...and leaves the critical and high ones to the sender of those lanes
    assert await claim_ids(queue, min_rank=1, max_rank=1) == [high.id]
    assert await claim_ids(queue, max_rank=1) == [crit.id]


async def test_claim_takes_only_due_deliveries_of_its_channel(store: SqlStore, queue: Queue) -> None:
    now_, later, sms = await seed(
        store,
        {"due_at": NOW},
        {"due_at": NOW + 60},
        {"channel": "sms", "address": "+33612345678"},
    )
    assert await claim_ids(queue, now=NOW) == [now_.id]
    assert await claim_ids(queue, now=NOW + 59) == []
    assert await claim_ids(queue, now=NOW + 60) == [later.id]
    assert await claim_ids(queue, "sms") == [sms.id]
    assert await claim_ids(queue, "push") == []


async def test_claim_takes_due_retries_but_not_scheduled_or_final(store: SqlStore, queue: Queue) -> None:
    (retry,) = await seed(store, {})
    await settle(store, queue, (retry, S.RETRYING), due_at=NOW + 60)
    await seed(store, {"status": S.SCHEDULED, "due_at": NOW}, {"status": S.SKIPPED, "reason": "opted_out"})
    assert await claim_ids(queue, now=NOW + 59) == []  # scheduled waits for promotion; skipped is final
    (again,) = await queue.claim("email", owner="w", limit=10, max_rank=3, lease=30, now=NOW + 60)
    assert (again.id, again.status, again.attempts_made) == (retry.id, S.SENDING, 1)
    assert await claim_ids(queue, now=NOW + 1000) == []


async def test_claimed_delivery_is_leased_and_not_claimed_again(store: SqlStore, queue: Queue) -> None:
    (a,) = await seed(store, {})
    (got,) = await queue.claim("email", owner="w1", limit=10, max_rank=3, lease=30, now=NOW)
    assert got.id == a.id and got.status == S.SENDING
    assert got.content == a.content and got.address == a.address  # what the worker needs to send
    for t in (NOW, NOW + 29, NOW + 30, NOW + 1000):
        assert await claim_ids(queue, owner="w2", now=t) == []
    stored = await store.get_delivery(a.id)
    assert stored is not None and stored.status == S.SENDING


async def test_expired_lease_is_reclaimed_with_a_lost_attempt_then_claimable(
    store: SqlStore, queue: Queue
) -> None:
    (a,) = await seed(store, {})
    await queue.claim("email", owner="w1", limit=10, max_rank=3, lease=30, now=NOW)
    assert await store.reclaim_expired_leases(now=NOW + 29) == []
    assert await claim_ids(queue, owner="w2", now=NOW + 29) == []
    assert await store.reclaim_expired_leases(now=NOW + 31) == ["email"]
    (again,) = await queue.claim("email", owner="w2", limit=10, max_rank=3, lease=30, now=NOW + 31)
    assert again.id == a.id and again.attempts_made == 1
    stored = await store.get_delivery(a.id)
    assert stored is not None
    assert [(x.outcome, x.ambiguous) for x in stored.attempts] == [(Outcome.LOST, True)]
    # w1 comes back from its stall: too late
    assert await store.record_results([result(a, "w1", S.SENT)], now=NOW + 32) == [a.id]
    assert await store.record_results([result(a, "w2", S.SENT, n=2)], now=NOW + 33) == []


async def test_extend_keeps_the_lease_of_its_owner_only(store: SqlStore, queue: Queue) -> None:
    a, b = await seed(store, {}, {})
    await queue.claim("email", owner="w1", limit=10, max_rank=3, lease=30, now=NOW)
    await queue.extend([a.id], owner="w1", until=NOW + 300)
    await queue.extend([b.id], owner="intruder", until=NOW + 300)
    await queue.extend([], owner="w1", until=NOW + 300)
    assert await store.reclaim_expired_leases(now=NOW + 31) == ["email"]
    got_a, got_b = await store.get_delivery(a.id), await store.get_delivery(b.id)
    assert got_a is not None and got_a.status == S.SENDING
    assert got_b is not None and got_b.status == S.RETRYING
    assert await store.record_results([result(a, "w1", S.SENT)], now=NOW + 100) == []


async def test_claim_skips_cancelled_deliveries(store: SqlStore, queue: Queue) -> None:
    (a,) = await seed(store, {})
    await store.cancel_notification(a.notification_id, now=NOW)
    assert await claim_ids(queue, now=NOW + 100) == []


async def test_concurrent_claimers_never_get_the_same_delivery(
    backend: SqlBackend, make_queue: MakeQueue
) -> None:
    """Many workers (several connection pools, as several processes have) claim at once."""
    store = backend.store
    specs = [{"priority": list(P)[i % 4], "due_at": NOW - (i % 7)} for i in range(240)]
    for i in range(0, len(specs), 60):
        await seed(store, *specs[i : i + 60])
    stores = [store] + [await backend.connect() for _ in range(2)]
    queues = list(await asyncio.gather(*(make_queue(s) for s in stores)))  # joins at once (kafka)
    claimed: dict[str, list[str]] = {}

    async def worker(i: int) -> None:
        q = queues[i % len(queues)]
        mine = claimed.setdefault(f"w{i}", [])
        while True:
            got = await q.claim("email", owner=f"w{i}", limit=5, max_rank=3, lease=60, now=NOW)
            if not got:
                return
            mine.extend(d.id for d in got)

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(12)))
    all_ids = [x for ids in claimed.values() for x in ids]
    assert len(all_ids) == len(set(all_ids)) == 240, "a delivery was claimed twice or lost"
    assert sum(1 for ids in claimed.values() if ids) > 1  # the work really was shared
    assert time.monotonic() - started < 60
    for ids in claimed.values():  # each claim went to its owner
        for d_id in ids[:3]:
            got = await store.get_delivery(d_id)
            assert got is not None and got.status == S.SENDING


async def test_concurrent_claimers_on_the_same_rows_get_disjoint_batches(
    backend: SqlBackend, make_queue: MakeQueue
) -> None:
    """All claimers ask for the same few rows at the same instant: SKIP LOCKED on PostgreSQL,
    the single writer on SQLite; either way every delivery goes to exactly one claimer."""
    await seed(backend.store, *({"priority": P.HIGH} for _ in range(10)))
    stores = [backend.store] + [await backend.connect() for _ in range(3)]
    queues = list(await asyncio.gather(*(make_queue(s) for s in stores)))  # joins at once (kafka)
    batches = await asyncio.gather(
        *(
            queues[i % len(queues)].claim("email", owner=f"c{i}", limit=4, max_rank=3, lease=60, now=NOW)
            for i in range(16)
        )
    )
    ids = [d.id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 10
    owners = {d.id: f"c{i}" for i, batch in enumerate(batches) for d in batch}
    for d_id, owner in owners.items():  # the row's lease names the claimer that got it
        assert await backend.store.record_results([result_for(d_id, owner)], now=NOW) == []


async def test_wake_and_wait(queue: Queue) -> None:
    started = time.monotonic()
    await queue.wait("email", 0.05)  # nothing to wake it: the timeout
    assert time.monotonic() - started >= 0.04

    waiter = asyncio.create_task(queue.wait("email", 10))
    await asyncio.sleep(0.01)
    queue.wake("email")
    await asyncio.wait_for(waiter, 2)

    waiter = asyncio.create_task(queue.wait("sms", 10))
    await asyncio.sleep(0.01)
    queue.wake()  # every channel
    await asyncio.wait_for(waiter, 2)

    queue.wake("push")  # a wake before the wait is not lost: no waiting out the 60 s
    started = time.monotonic()
    await queue.wait("push", 60)
    assert time.monotonic() - started < 30


async def test_wake_reaches_the_other_processes(backend: SqlBackend) -> None:
    """PostgreSQL: a wake in one process (a router, the scheduler) wakes every process's
    workers through LISTEN/NOTIFY, and the listener survives losing its connection."""
    if backend.name != "postgres":
        pytest.skip("SQLite runs in one process: its wake-ups are in-process signals")
    sender = SqlQueue(backend.store.db)
    receiver = SqlQueue((await backend.connect()).db)  # its own pool and signals
    await sender.start()
    await receiver.start()

    async def woken(channel: str | None, listen_on: str, within: float) -> bool:
        await receiver.wait(listen_on, 0.01)  # forget earlier wakes
        waiter = asyncio.create_task(receiver.wait(listen_on, within))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        sender.wake(channel)
        await waiter
        return time.monotonic() - started < within * 0.8

    try:
        assert await woken("email", "email", 3)
        assert await woken(None, "sms", 3)  # every channel
        assert not await woken("push", "email", 0.5)  # another channel's wake is not this one's

        # kill every connection of this test, the listeners' among them
        pg_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{backend.schema}'"
        )
        deadline = time.monotonic() + 30
        while not await woken("email", "email", 0.5):
            assert time.monotonic() < deadline, "the listener did not come back"
    finally:
        await sender.close()
        await receiver.close()
