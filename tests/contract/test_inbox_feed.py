"""The live inbox's durable order (issue 19), over SQLite and PostgreSQL: numbers per user,
given once, contiguous and in commit order even when several processes send at once."""

from __future__ import annotations

import asyncio

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.adapters.store.sql_inbox import SqlInboxFeed
from tests.contract.conftest import NOW, S, SqlBackend, result, seed, settle


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


async def test_record_results_numbers_in_app_items_sent_and_tells_after_commit(
    store: SqlStore, queue: SqlQueue
) -> None:
    told: list[list[tuple[str, str, int]]] = []

    def listener(items: list[tuple[str, str, int]]) -> None:
        told.append(items)  # called once the transaction committed

    store.on_inbox_numbered(listener)
    feed = SqlInboxFeed(store.db)
    await feed.append([("u1", "older")], now=NOW)  # u1's feed already holds one item
    a, b, failed, mail = await seed(
        store,
        {"user_id": "u1", "channel": "in_app", "address": "u1"},
        {"user_id": "u2", "channel": "in_app", "address": "u2"},
        {"user_id": "u3", "channel": "in_app", "address": "u3"},
        {"user_id": "u1", "channel": "email"},
    )
    claimed = await queue.claim("in_app", owner="w", limit=10, max_rank=3, lease=30, now=NOW)
    assert {d.id for d in claimed} == {a.id, b.id, failed.id}
    rejected = await store.record_results(
        [result(a, "w", S.SENT), result(b, "w", S.SENT), result(failed, "w", S.DEAD)], now=NOW
    )
    assert rejected == []
    assert told == [[("u1", a.id, 2), ("u2", b.id, 1)]]  # only the items sent, in order
    assert (await feed.head("u1"), await feed.head("u2")) == (2, 1)
    # The email is no inbox item; a result refused (lost lease) numbers nothing.
    await settle(store, queue, (mail, S.SENT))
    assert await store.record_results([result(a, "w", S.SENT)], now=NOW) == [a.id]
    assert len(told) == 1 and await feed.head("u1") == 2
    entries, unread = await feed.after("u1", 0, limit=10)
    assert [(e.seq, e.delivery.id) for e in entries] == [(2, a.id)] and unread == 1  # ("older": no row)
