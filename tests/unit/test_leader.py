"""Leader election on a fake clock: who leads, when the lease passes, and that a holder that
cannot renew stops acting on its own clock — without sleeping (the real-backend loop is in
tests/contract/test_store_outbox.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from herald.adapters.store.sql import SqlStore
from herald.services.leader import LeaderLease
from herald.testing import FakeClock, memory_store

TTL = 5.0


@pytest.fixture
async def store() -> AsyncIterator[SqlStore]:
    s = memory_store()
    await s.start()
    yield s
    await s.close()


def lease(store: SqlStore, clock: FakeClock, owner: str) -> LeaderLease:
    # One fake clock stands for the store's time and for each process's monotonic clock.
    return LeaderLease(store, clock, ttl=TTL, owner=owner, monotonic=clock.now)


async def test_one_leads_the_other_takes_over_only_after_the_lease_runs_out(store: SqlStore) -> None:
    clock = FakeClock()
    one, two = lease(store, clock, "one"), lease(store, clock, "two")
    with capture_logs() as logs:
        assert await one.try_acquire() and one.is_leader
        assert not await two.try_acquire() and not two.is_leader

        for _ in range(6):  # the holder renews every ttl/3: the other never gets in
            clock.advance(TTL / 3)
            assert await one.try_acquire()
            assert not await two.try_acquire()

        # the holder dies: no renewal, no release
        clock.advance(TTL - 0.01)
        assert not await two.try_acquire(), "the lease has not run out yet"
        assert one.is_leader, "from its own clock, the holder's last renewal still holds"
        clock.advance(0.02)
        assert not one.is_leader, "the dead holder would stop acting as soon as its lease ran out"
        assert await two.try_acquire() and two.is_leader
    acquired = [e for e in logs if e["event"] == "scheduler.leader_acquired"]
    assert [e["owner"] for e in acquired] == ["one", "two"]
    assert acquired[1]["previous_owner"] == "one"
    assert acquired[1]["takeover_s"] == TTL + 0.01  # after the last renewal
    assert acquired[1]["vacant_s"] == 0.01  # after the lease's expiry


async def test_a_graceful_stop_hands_over_at_once(store: SqlStore) -> None:
    clock = FakeClock()
    one, two = lease(store, clock, "one"), lease(store, clock, "two")
    assert await one.try_acquire()
    assert not await two.try_acquire()
    await one.release()
    assert not one.is_leader
    assert await two.try_acquire(), "released: the next contender takes it without waiting"


async def test_a_holder_that_cannot_renew_in_time_stops_leading(store: SqlStore) -> None:
    clock = FakeClock()
    one = lease(store, clock, "one")
    assert await one.try_acquire()
    clock.advance(TTL + 1)  # the renewals did not get through (store unreachable, process paused)
    assert not one.is_leader
    other = lease(store, clock, "other")
    assert await other.try_acquire()
    # the old holder comes back: it finds the lease taken and knows it lost
    with capture_logs() as logs:
        assert not await one.try_acquire()
    assert not one.is_leader
    assert [e["event"] for e in logs] == ["scheduler.leader_lost"]
