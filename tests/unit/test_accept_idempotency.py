"""AcceptService.idempotent: the key is written with what the request commits, never before.

Two services on one store stand for two herald processes. Nothing a request does before its
commit leaves a claim behind: a build that fails (or a process that dies) frees the key at
once, and of two racing requests the first commit wins while the other is answered with its
response and stores nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from herald.adapters.store.sql import SqlStore
from herald.domain.errors import IdempotencyInProgress, IdempotencyMismatch, ServiceUnavailable
from herald.domain.models import Category, Notification, NotificationStatus, Priority, new_id
from herald.services.accept import Accepted, AcceptService
from herald.services.catalog import Catalog
from herald.testing import FakeClock, memory_store


def _service(store: SqlStore, clock: FakeClock) -> AcceptService:
    catalog = Catalog(
        categories={"c": Category("c", priority=Priority.NORMAL)},
        default_category="c",
        enabled_channels=frozenset({"email"}),
        idempotency_ttl=3600,
    )
    return AcceptService(store, clock, catalog, on_accepted=lambda critical: None)


def _note(clock: FakeClock) -> Notification:
    return Notification(
        id=new_id("ntf"),
        status=NotificationStatus.ACCEPTED,
        recipients=[],
        template=None,
        template_version=None,
        content=None,
        data={},
        channels=["email"],
        category="c",
        priority=Priority.NORMAL,
        created_at=clock.now(),
    )


@pytest.fixture
async def store() -> AsyncIterator[SqlStore]:
    s = memory_store()
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def _count(store: SqlStore) -> int:
    from herald.ports import NotificationFilter

    return len(await store.list_notifications(NotificationFilter(limit=200)))


async def test_a_build_that_fails_leaves_no_claim(store: SqlStore) -> None:
    clock = FakeClock()
    svc = _service(store, clock)

    async def broken() -> tuple[list[Notification], Accepted]:
        raise ServiceUnavailable("the process died here")

    with pytest.raises(ServiceUnavailable):
        await svc.idempotent("k", "key-1", {"a": 1}, broken)
    # The retry (here, or in a restarted process) is accepted at once.
    other = _service(store, clock)

    async def build() -> tuple[list[Notification], Accepted]:
        n = _note(clock)
        return [n], Accepted(202, {"id": n.id})

    result = await other.idempotent("k", "key-1", {"a": 1}, build)
    assert result.status_code == 202
    again = await svc.idempotent("k", "key-1", {"a": 1}, build)
    assert again.body == result.body  # the original response
    with pytest.raises(IdempotencyMismatch):
        await svc.idempotent("k", "key-1", {"a": 2}, build)
    assert await _count(store) == 1


async def test_of_two_racing_processes_the_first_commit_wins_and_the_other_gets_its_answer(
    store: SqlStore,
) -> None:
    clock = FakeClock()
    first, second = _service(store, clock), _service(store, clock)
    first_committed = asyncio.Event()
    made: list[str] = []

    async def build_first() -> tuple[list[Notification], Accepted]:
        n = _note(clock)
        made.append(n.id)
        return [n], Accepted(202, {"id": n.id})

    async def build_second() -> tuple[list[Notification], Accepted]:
        await first_committed.wait()  # it looked, found no key, and is slower to commit
        n = _note(clock)
        made.append(n.id)
        return [n], Accepted(202, {"id": n.id})

    slow = asyncio.create_task(second.idempotent("k", "same", {"a": 1}, build_second))
    await asyncio.sleep(0.05)
    fast = await first.idempotent("k", "same", {"a": 1}, build_first)
    first_committed.set()
    late = await slow
    assert late.body == fast.body and len(made) == 2
    assert await _count(store) == 1  # the second build stored nothing
    assert await store.get_notification(made[1]) is None


async def test_a_second_request_in_the_same_process_while_the_first_builds_is_a_409(store: SqlStore) -> None:
    clock = FakeClock()
    svc = _service(store, clock)
    release = asyncio.Event()

    async def slow_build() -> tuple[list[Notification], Accepted]:
        await release.wait()
        n = _note(clock)
        return [n], Accepted(202, {"id": n.id})

    task = asyncio.create_task(svc.idempotent("k", "busy", {"a": 1}, slow_build))
    await asyncio.sleep(0.05)
    with pytest.raises(IdempotencyInProgress):
        await svc.idempotent("k", "busy", {"a": 1}, slow_build)
    release.set()
    done = await task
    assert (await svc.idempotent("k", "busy", {"a": 1}, slow_build)).body == done.body


async def test_an_expired_key_is_a_new_request(store: SqlStore) -> None:
    clock = FakeClock()
    svc = _service(store, clock)

    async def build() -> tuple[list[Notification], Accepted]:
        n = _note(clock)
        return [n], Accepted(202, {"id": n.id})

    one = await svc.idempotent("k", "old", {"a": 1}, build)
    clock.advance(3601)
    two = await svc.idempotent("k", "old", {"a": 2}, build)
    assert one.body != two.body
    assert await _count(store) == 2
