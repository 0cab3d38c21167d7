"""The Store port's outbox, claims by id and named leases (issue 5), on memory, sqlite, postgres.

With ``outbox`` on, every transaction that makes a delivery claimable writes an outbox row in the
same transaction; with it off, nothing is written. Leader election runs on the named leases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Connection, select
from structlog.testing import capture_logs

from herald.adapters.store import schema as t
from herald.adapters.store.sql import SqlStore
from herald.bootstrap import SystemClock
from herald.domain.models import Priority
from herald.ports import OutboxItem, RoutedBatch, RoutedClaim
from herald.services.leader import LeaderLease
from tests.contract.conftest import (
    NOW,
    S,
    SqlBackend,
    make_delivery,
    make_notification,
    pg_execute,
    result,
    seed,
)

P = Priority


async def outbox_rows(store: SqlStore) -> list[tuple[str, str, int, float]]:
    o = t.outbox

    def op(c: Connection) -> list[tuple[str, str, int, float]]:
        rows = c.execute(select(o.c.delivery_id, o.c.channel, o.c.priority, o.c.due_at).order_by(o.c.id))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    return await store.db.run(op)


async def drain(store: SqlStore) -> list[tuple[str, str, int, float]]:
    """Read and forget every outbox row (the relay's job), to look at what comes next."""
    rows = await outbox_rows(store)
    o = t.outbox
    await store.db.run(lambda c: c.execute(o.delete()))
    return rows


async def claim(store: SqlStore, *ids: str, now: float = NOW, owner: str = "w") -> list[str]:
    return [d.id for d in await store.claim_ids(list(ids), owner=owner, lease=30, now=now)]


async def test_outbox_off_writes_nothing(store: SqlStore) -> None:
    assert store.outbox is False
    a, _ = await seed(store, {}, {"status": S.SCHEDULED, "due_at": NOW + 10})
    await store.promote_scheduled(now=NOW + 10)
    assert await claim(store, a.id) == [a.id]
    await store.record_results([result(a, "w", S.RETRYING, due_at=NOW + 60)], now=NOW)
    assert await outbox_rows(store) == []


async def test_every_change_into_claimable_writes_an_outbox_row(store: SqlStore) -> None:
    store.outbox = True
    queued, sched, skipped, crit = await seed(
        store,
        {"due_at": NOW - 5},
        {"status": S.SCHEDULED, "due_at": NOW + 100},
        {"status": S.SKIPPED, "reason": "opted_out"},
        {"priority": P.CRITICAL, "channel": "sms", "address": "+33612345678"},
    )
    # routing: only the claimable ones, with their lane and due time
    assert await drain(store) == [(queued.id, "email", 2, NOW - 5), (crit.id, "sms", 0, NOW)]

    # routing again (a router that took over a lost routing lease) writes nothing for rows that
    # exist already: their outbox rows were written with them
    n_id = queued.notification_id
    again = make_delivery(n_id, user_id=queued.user_id, delivery_id=queued.id)
    await store.db.run(
        lambda c: c.execute(
            t.notifications.update()
            .where(t.notifications.c.id == n_id)
            .values(status="routing", lease_owner="router2", lease_until=NOW + 60)
        )
    )
    assert await store.save_routed(RoutedBatch(n_id, [again], 1, True), owner="router2", now=NOW)
    assert await drain(store) == []

    # the scheduler promotes a scheduled delivery
    await store.promote_scheduled(now=NOW + 100)
    assert await drain(store) == [(sched.id, "email", 2, NOW + 100)]

    # a worker's transient failure: retrying, due at the retry time; a success writes nothing
    assert await claim(store, queued.id, sched.id, now=NOW + 100) == [queued.id, sched.id]
    assert (
        await store.record_results(
            [result(queued, "w", S.RETRYING, due_at=NOW + 160), result(sched, "w", S.SENT)], now=NOW + 100
        )
        == []
    )
    assert await drain(store) == [(queued.id, "email", 2, NOW + 160)]

    # a lost lease: retrying now
    assert await claim(store, crit.id, now=NOW + 100) == [crit.id]
    assert await store.reclaim_expired_leases(now=NOW + 131) == ["sms"]
    assert await drain(store) == [(crit.id, "sms", 0, NOW + 131)]

    # a dead letter replayed
    assert await claim(store, crit.id, now=NOW + 131) == [crit.id]
    await store.record_results([result(crit, "w", S.DEAD, n=2)], now=NOW + 132)
    assert await drain(store) == []
    assert [d.id for d in await store.replay_dead_letters([crit.id], now=NOW + 200)] == [crit.id]
    assert await drain(store) == [(crit.id, "sms", 0, NOW + 200)]
    assert skipped.id not in {r[0] for r in await outbox_rows(store)}


async def test_claim_outbox_leases_rows_and_release_gives_them_back(store: SqlStore) -> None:
    store.outbox = True
    a, b, c = await seed(store, {"due_at": NOW - 2}, {"due_at": NOW - 1}, {"due_at": NOW + 10})
    first = await store.claim_outbox(limit=1, now=NOW, lease=30)
    assert [i.delivery_id for i in first] == [a.id]  # oldest due first
    second = await store.claim_outbox(limit=10, now=NOW, lease=30)
    assert [i.delivery_id for i in second] == [b.id]  # a is leased, c is not due
    assert await store.claim_outbox(limit=10, now=NOW, lease=30) == []
    assert await store.outbox_next_due() == NOW + 10

    await store.release_outbox(first)  # its publish failed: due as before
    assert [i.delivery_id for i in await store.claim_outbox(limit=10, now=NOW, lease=30)] == [a.id]
    await store.delete_outbox([i.id for i in first + second])
    # a relay that died holding rows: they come back when its lease runs out
    assert [i.delivery_id for i in await store.claim_outbox(limit=10, now=NOW + 10, lease=30)] == [c.id]
    assert [i.delivery_id for i in await store.claim_outbox(limit=10, now=NOW + 41, lease=30)] == [c.id]


async def test_claim_outbox_takes_critical_ahead_of_an_older_low_backlog(store: SqlStore) -> None:
    store.outbox = True
    lows = await seed(store, *({"due_at": NOW - 100 + i, "priority": P.LOW} for i in range(5)))
    sms = {"channel": "sms", "address": "+33612345678"}
    (crit,) = await seed(store, {"due_at": NOW, "priority": P.CRITICAL, **sms})
    (normal,) = await seed(store, {"due_at": NOW - 1})
    first = await store.claim_outbox(limit=2, now=NOW, lease=30)
    # priority first, then due time: the critical row is published ahead of older low ones
    assert [i.delivery_id for i in first] == [crit.id, normal.id]
    rest = await store.claim_outbox(limit=10, now=NOW, lease=30)
    assert [i.delivery_id for i in rest] == [d.id for d in lows]  # low ones still oldest first


async def test_claim_outbox_of_some_lanes_takes_only_theirs(store: SqlStore) -> None:
    """A relay of the critical and high lanes (herald serve beside bulk children) and one of
    the bulk lanes share the outbox without taking each other's rows."""
    store.outbox = True
    lows = await seed(store, *({"due_at": NOW - 100 + i, "priority": P.LOW} for i in range(5)))
    (normal,) = await seed(store, {"due_at": NOW - 1})
    (crit,) = await seed(store, {"due_at": NOW, "priority": P.CRITICAL})
    (high,) = await seed(store, {"due_at": NOW - 5, "priority": P.HIGH})
    (later,) = await seed(store, {"due_at": NOW + 30, "priority": P.HIGH})
    urgent = await store.claim_outbox(limit=10, now=NOW, lease=30, ranks=[0, 1])
    assert [i.delivery_id for i in urgent] == [crit.id, high.id]  # by lane, then due time
    assert await store.outbox_next_due([0, 1]) == NOW + 30  # its own lanes' next row
    assert await store.outbox_next_due([3]) == NOW - 100
    bulk = await store.claim_outbox(limit=4, now=NOW, lease=30, ranks=[2, 3])
    assert [i.delivery_id for i in bulk] == [normal.id] + [d.id for d in lows[:3]]  # the limit holds
    bulk += await store.claim_outbox(limit=10, now=NOW, lease=30, ranks=[3, 2])
    assert [i.delivery_id for i in bulk[4:]] == [d.id for d in lows[3:]]
    assert await store.claim_outbox(limit=10, now=NOW, lease=30, ranks=[2, 3]) == []
    await store.delete_outbox([i.id for i in urgent + bulk])
    assert await store.outbox_next_due([2, 3]) is None
    assert [i.delivery_id for i in await store.claim_outbox(limit=10, now=NOW + 30, lease=30)] == [later.id]


async def test_concurrent_relays_take_disjoint_outbox_rows(backend: SqlBackend) -> None:
    backend.store.outbox = True
    for i in range(4):
        await seed(backend.store, *({"due_at": NOW - j} for j in range(25)), now=NOW + i)
    stores = [backend.store] + [await backend.connect() for _ in range(3)]
    taken: list[OutboxItem] = []

    async def relay(s: SqlStore) -> None:
        while got := await s.claim_outbox(limit=7, now=NOW, lease=30):
            taken.extend(got)

    await asyncio.gather(*(relay(stores[i % 4]) for i in range(8)))
    ids = [i.id for i in taken]
    assert len(ids) == len(set(ids)) == 100


async def test_claim_ids_claims_like_a_queue_claim(store: SqlStore) -> None:
    store.outbox = True
    due, later, sent = await seed(store, {}, {"due_at": NOW + 60}, {})
    assert await claim(store, sent.id) == [sent.id]
    await store.record_results([result(sent, "w", S.SENT)], now=NOW)
    await drain(store)

    got = await store.claim_ids(
        [due.id, due.id, later.id, sent.id, "dlv_unknown"], owner="w2", lease=30, now=NOW
    )
    assert [(d.id, d.status, d.address) for d in got] == [(due.id, S.SENDING, due.address)]
    # not due yet: its message came early; it is published again when due
    assert await drain(store) == [(later.id, "email", 2, NOW + 60)]
    assert await claim(store, due.id, owner="w3") == []  # leased to w2
    assert await store.record_results([result(due, "w2", S.SENT)], now=NOW) == []
    # within `early` of its due time a message is taken as due (clocks differ between hosts)
    got = await store.claim_ids([later.id], owner="w", lease=30, now=NOW + 59.7, early=0.5)
    assert [d.id for d in got] == [later.id]

    # extend_leases: only the owner's
    await store.extend_leases([later.id], owner="intruder", until=NOW + 500)
    assert await store.reclaim_expired_leases(now=NOW + 100) == ["email"]
    await store.extend_leases([], owner="w", until=NOW)


@pytest.mark.parametrize("outbox", [False, True], ids=["sql-queue", "broker-queue"])
async def test_save_routed_many_writes_named_deliveries_already_claimed(
    store: SqlStore, outbox: bool
) -> None:
    """RoutedClaim: of the deliveries it names, those still queued once dedup has run and
    inserted by this call go in as `sending` under the claim's lease, without an outbox row;
    the rest are written as always, and the batch says which is which."""
    store.outbox = outbox
    held = make_notification(user_ids=("a",), dedup_key="k")
    n = make_notification(user_ids=("a", "b", "c"), dedup_key="k")
    await store.create_notifications([held, n])
    await store.claim_unrouted(owner="r", limit=10, lease=30, now=NOW)
    first = make_delivery(held.id, user_id="a")
    assert await store.save_routed(
        RoutedBatch(held.id, [first], recipients_done=1, finished=True, dedup_key="k"), owner="r", now=NOW
    )
    await drain(store)
    a, b, c = (make_delivery(n.id, user_id=u, priority=P.CRITICAL) for u in ("a", "b", "c"))
    again = make_delivery(n.id, user_id="e", delivery_id=first.id)  # its row exists: not ours
    taken = RoutedClaim(owner="w", until=NOW + 30, ids=frozenset({a.id, b.id, again.id}))
    batch = RoutedBatch(n.id, [a, b, c, again], recipients_done=3, finished=True, dedup_key="k")
    assert await store.save_routed_many([batch], owner="r", now=NOW + 1, claim=taken) == [True]
    # a: a duplicate (dedup), not claimed; b: claimed; c: not named, queued; again: not written
    assert [x.status for x in (a, b, c, again)] == [S.SKIPPED, S.SENDING, S.QUEUED, S.QUEUED]
    gone = await store.get_delivery(first.id)
    assert gone is not None and gone.notification_id == held.id and gone.status == S.QUEUED
    got = await store.get_delivery(b.id)
    assert got is not None and (got.status, got.queued_at) == (S.SENDING, NOW + 1)
    assert await drain(store) == ([(c.id, "email", 0, NOW)] if outbox else [])
    # Leased to w: nobody else claims it, w's result is taken, an expired lease is reclaimed.
    assert await claim(store, b.id, owner="w2") == []
    assert await store.record_results([result(b, "w", S.SENT)], now=NOW + 2) == []
    got = await store.get_delivery(b.id)
    assert got is not None and got.status == S.SENT

    lost = make_notification(user_ids=("d",))
    await store.create_notifications([lost])
    await store.claim_unrouted(owner="r", limit=10, lease=30, now=NOW)
    d = make_delivery(lost.id, user_id="d", priority=P.HIGH)
    taken = RoutedClaim(owner="w", until=NOW + 30, ids=frozenset({d.id}))
    batch = RoutedBatch(lost.id, [d], recipients_done=1, finished=True)
    assert await store.save_routed_many([batch], owner="r", now=NOW, claim=taken) == [True]
    assert await store.reclaim_expired_leases(now=NOW + 31) == ["email"]  # w died before sending
    assert await claim(store, d.id, owner="w2", now=NOW + 31) == [d.id]


async def test_requeue_ids_writes_rows_for_claimable_deliveries_only(store: SqlStore) -> None:
    store.outbox = True
    a, b = await seed(store, {}, {})
    assert await claim(store, b.id) == [b.id]
    await drain(store)
    assert await store.requeue_ids([a.id, b.id, "nope"], due_at=NOW + 60, now=NOW) == 1
    assert await drain(store) == [(a.id, "email", 2, NOW + 60)]


async def test_named_lease_has_one_holder_at_a_time(backend: SqlBackend) -> None:
    s = backend.store
    assert await s.get_lease("scheduler") is None
    assert await s.acquire_or_renew("scheduler", "a", ttl=5, now=NOW)
    assert not await s.acquire_or_renew("scheduler", "b", ttl=5, now=NOW + 4.9)
    assert await s.acquire_or_renew("scheduler", "a", ttl=5, now=NOW + 4)  # renewed: until NOW + 9
    assert not await s.acquire_or_renew("scheduler", "b", ttl=5, now=NOW + 8.9)
    lease = await s.get_lease("scheduler")
    assert lease is not None and (lease.owner, lease.until, lease.acquired_at) == ("a", NOW + 9, NOW)
    assert await s.acquire_or_renew("scheduler", "b", ttl=5, now=NOW + 9.1)  # expired: taken over
    lease = await s.get_lease("scheduler")
    assert lease is not None and (lease.owner, lease.acquired_at) == ("b", NOW + 9.1)
    assert await s.acquire_or_renew("other", "a", ttl=5, now=NOW + 9.1)  # names are independent
    await s.release_lease("scheduler", "a")  # not the holder: nothing
    assert not await s.acquire_or_renew("scheduler", "a", ttl=5, now=NOW + 9.2)
    await s.release_lease("scheduler", "b")
    assert await s.acquire_or_renew("scheduler", "a", ttl=5, now=NOW + 9.3)

    # many contenders at the same instant, from several pools: exactly one wins
    stores = [s] + [await backend.connect() for _ in range(3)]
    wins = await asyncio.gather(
        *(stores[i % 4].acquire_or_renew("race", f"c{i}", ttl=5, now=NOW) for i in range(16))
    )
    assert sum(wins) == 1


async def test_leader_election_takes_over_when_the_holder_stops_renewing(backend: SqlBackend) -> None:
    """Two schedulers: one leads; it dies (stops renewing, no release); the other takes over
    once the lease ran out; a graceful stop hands over. The timings (within the ttl, at once) are
    asserted on a fake clock in tests/unit/test_leader.py; here the real loop on each backend, with
    deadlines a loaded machine cannot miss."""
    ttl = 3.0
    clock = SystemClock()
    one = LeaderLease(backend.store, clock, ttl=ttl, owner="one")
    two = LeaderLease(await backend.connect(), clock, ttl=ttl, owner="two")
    stop_one, stop_two = asyncio.Event(), asyncio.Event()
    with capture_logs() as logs:
        run_one = asyncio.create_task(one.run(stop_one))
        assert await one.wait_leader(stop_one, 5)
        run_two = asyncio.create_task(two.run(stop_two))
        await asyncio.sleep(ttl * 1.5)  # several renewals and contention rounds
        assert one.is_leader and not two.is_leader

        run_one.cancel()  # the holder dies: it neither renews nor releases
        died = time.monotonic()
        await asyncio.gather(run_one, return_exceptions=True)
        assert await two.wait_leader(stop_two, ttl * 10)
        takeover = time.monotonic() - died
        # the dead holder would not act either: its lease ran out on its own clock
        await asyncio.sleep(max(0.0, ttl - takeover) + 0.05)
        assert not one.is_leader

        # graceful stop: released, the next contender takes over at once
        three = LeaderLease(await backend.connect(), clock, ttl=ttl, owner="three")
        stop_three = asyncio.Event()
        run_three = asyncio.create_task(three.run(stop_three))
        await asyncio.sleep(ttl / 4)
        assert not three.is_leader
        stop_two.set()
        await run_two
        handed = time.monotonic()
        assert await three.wait_leader(stop_three, ttl * 10)
        assert time.monotonic() - handed < ttl, "released: no wait for the lease to run out"
        stop_three.set()
        await run_three
    acquired = [e for e in logs if e["event"] == "scheduler.leader_acquired"]
    assert [e["owner"] for e in acquired] == ["one", "two", "three"]
    assert acquired[1]["previous_owner"] == "one" and 0 < acquired[1]["takeover_s"] < ttl * 3


@pytest.mark.parametrize("ttl", [1.0])
async def test_only_the_leader_runs_the_scheduler(backend: SqlBackend, ttl: float) -> None:
    """The scheduler role's loop ticks only while its process holds the lease."""
    from herald.adapters.queue.sql import SqlQueue
    from herald.services.schedule import SchedulerService

    clock = SystemClock()
    stores = [backend.store, await backend.connect()]
    ticks = {"a": 0, "b": 0}
    stops = {name: asyncio.Event() for name in ticks}
    leaders = {name: LeaderLease(stores[i], clock, ttl=ttl, owner=name) for i, name in enumerate(ticks)}

    class Counting(SchedulerService):
        def __init__(self, name: str, store: SqlStore) -> None:
            super().__init__(store, SqlQueue(store.db), clock, max_sleep=0.05)
            self.name = name

        async def tick(self) -> float | None:
            ticks[self.name] += 1
            return await super().tick()

    async def until(condition: Callable[[], bool]) -> None:
        # Polled, not slept: on a slow machine the first lease can take a while to take.
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    tasks = []
    for i, name in enumerate(ticks):
        tasks.append(asyncio.create_task(leaders[name].run(stops[name])))
        tasks.append(asyncio.create_task(Counting(name, stores[i]).run(stops[name], leaders[name])))
        if name == "a":
            await until(lambda: ticks["a"] > 0)
    await asyncio.sleep(0.5)  # b's lease loop and scheduler run meanwhile, and wait
    assert ticks["a"] > 0 and ticks["b"] == 0
    stops["a"].set()
    await until(lambda: ticks["b"] > 0)
    stops["b"].set()
    await asyncio.gather(*tasks)
    assert await stores[0].get_lease("scheduler") is None  # both released on the way out


async def test_maintain_vacuums_a_queue_table_full_of_dead_rows(backend: SqlBackend) -> None:
    store = backend.store
    if backend.name != "postgres":
        assert await store.maintain() == []  # SQLite needs no vacuum to keep claims cheap
        return
    o = t.outbox
    rows = [
        {"delivery_id": f"dlv_{i}", "channel": "email", "priority": 3, "due_at": NOW, "created_at": NOW}
        for i in range(6000)
    ]
    await store.db.run(lambda c: c.execute(o.insert(), rows))
    await store.db.run(lambda c: c.execute(o.delete()))

    def dead() -> int:
        got = pg_execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables "
            f"WHERE schemaname = '{backend.schema}' AND relname = 'outbox'"
        )
        return int(got[0][0])

    deadline = time.monotonic() + 30
    cleaned: list[str] = []
    while not cleaned:  # the statistics of a finished transaction arrive within a second or so
        assert time.monotonic() < deadline, f"never vacuumed; dead rows {dead()}"
        cleaned = await store.maintain()
        await asyncio.sleep(0.2)
    assert cleaned == ["outbox"]
    assert dead() == 0
    assert await store.maintain() == []  # nothing left to do
