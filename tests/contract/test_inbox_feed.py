"""The live inbox's durable order (issue 19), over SQLite and PostgreSQL: numbers per user,
given once, contiguous and in commit order even when several processes send at once."""

from __future__ import annotations

import asyncio

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.adapters.store.sql_inbox import SqlInboxFeed
from tests.contract.conftest import NOW, S, SqlBackend, seed, settle


async def test_numbers_per_user_once_each(store: SqlStore) -> None:
    feed = SqlInboxFeed(store.db)
    assert await feed.head("u1") == 0
    got = await feed.append([("u1", "d1"), ("u2", "d2"), ("u1", "d3")], now=NOW)
    assert got == {"d1": 1, "d2": 1, "d3": 2}
    # Sent again (a redelivery after a crash): the same number, nothing new.
    assert await feed.append([("u1", "d1")], now=NOW) == {"d1": 1}
    assert await feed.append([("u1", "d4")], now=NOW) == {"d4": 3}
    assert (await feed.head("u1"), await feed.head("u2"), await feed.head("nobody")) == (3, 1, 0)


async def test_concurrent_senders_in_several_processes_get_contiguous_numbers(backend: SqlBackend) -> None:
    feeds = [SqlInboxFeed((await backend.connect()).db) for _ in range(3)]

    async def send(i: int) -> dict[str, int]:
        return await feeds[i % len(feeds)].append([("u1", f"d{i}")], now=NOW)

    results = await asyncio.gather(*(send(i) for i in range(60)))
    numbers = sorted(n for r in results for n in r.values())
    assert numbers == list(range(1, 61))  # no number twice, none skipped
    assert await feeds[0].head("u1") == 60


async def test_after_replays_in_order_with_the_unread_count(store: SqlStore, queue: SqlQueue) -> None:
    feed = SqlInboxFeed(store.db)
    ds = [(await seed(store, {"user_id": "u1", "channel": "in_app", "address": "u1"}))[0] for _ in range(3)]
    (theirs,) = await seed(store, {"user_id": "u2", "channel": "in_app", "address": "u2"})
    await settle(store, queue, *((d, S.SENT) for d in [*ds, theirs]))
    await feed.append([("u1", d.id) for d in ds], now=NOW)
    await feed.append([("u2", theirs.id)], now=NOW)
    await store.mark_delivery(ds[0].id, S.READ, now=NOW + 1)

    entries, unread = await feed.after("u1", 0, limit=10)
    assert [(e.seq, e.delivery.id) for e in entries] == [(1, ds[0].id), (2, ds[1].id), (3, ds[2].id)]
    assert unread == 2
    entries, _ = await feed.after("u1", 1, limit=1)
    assert [e.delivery.id for e in entries] == [ds[1].id]
    assert (await feed.after("u1", 3, limit=10))[0] == []
    # A user's feed never holds another user's item, even when asked with its number.
    entries, unread = await feed.after("u2", 0, limit=10)
    assert [e.delivery.id for e in entries] == [theirs.id] and unread == 1
