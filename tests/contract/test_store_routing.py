"""The Store port's contract for routing (idempotent accepts, notifications, the router's claim
and writes, cancel, dedup, the recipients' context), on every adapter (memory, sqlite, postgres).
"""

from __future__ import annotations

import asyncio

import pytest

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.domain.errors import IdempotencyKeyTaken, NotFound
from herald.domain.models import (
    Device,
    NotificationStatus,
    Preferences,
    Priority,
    Recipient,
    User,
    new_id,
)
from herald.ports import IdempotencyClaim, NotificationFilter, RoutedBatch
from tests.contract.conftest import (
    NOW,
    S,
    SqlBackend,
    make_delivery,
    make_notification,
    make_user,
    seed,
    settle,
)

# Idempotency -------------------------------------------------------------------------------------


def _claim(
    scope: str, key: str, digest: str, nid: str, *, at: float = NOW, ttl: float = 3600
) -> IdempotencyClaim:
    return IdempotencyClaim(scope, key, digest, 202, {"id": nid}, created_at=at, expires_at=at + ttl)


async def test_an_idempotency_key_is_written_with_its_notifications(store: SqlStore) -> None:
    assert await store.get_idempotent("k1", "order-42", now=NOW) is None
    n = make_notification()
    await store.create_notifications([n], idempotency=[_claim("k1", "order-42", "hash-a", n.id)])
    rec = await store.get_idempotent("k1", "order-42", now=NOW + 1)
    assert rec is not None
    assert (rec.state, rec.request_hash, rec.status_code, rec.response) == (
        "done",
        "hash-a",
        202,
        {"id": n.id},
    )
    assert await store.get_idempotent("k2", "order-42", now=NOW) is None  # keys are per scope


async def test_a_taken_idempotency_key_commits_nothing_and_names_the_winner(store: SqlStore) -> None:
    first, second = make_notification(), make_notification()
    await store.create_notifications([first], idempotency=[_claim("k", "a", "h1", first.id)])
    with pytest.raises(IdempotencyKeyTaken) as taken:
        await store.create_notifications([second], idempotency=[_claim("k", "a", "h2", second.id)])
    assert (taken.value.request_hash, taken.value.status_code) == ("h1", 202)
    assert taken.value.response == {"id": first.id}
    assert await store.get_notification(second.id) is None  # rolled back
    assert await store.get_notification(first.id) is not None
    # Two claims of one key in one transaction (a group commit): the second is refused.
    a, b = make_notification(), make_notification()
    with pytest.raises(IdempotencyKeyTaken):
        await store.create_notifications(
            [a, b], idempotency=[_claim("k", "b", "h", a.id), _claim("k", "b", "h", b.id)]
        )
    assert (
        await store.get_notification(a.id) is None and await store.get_idempotent("k", "b", now=NOW) is None
    )


async def test_an_idempotency_key_expires(store: SqlStore) -> None:
    n1, n2 = make_notification(), make_notification()
    await store.create_notifications([n1], idempotency=[_claim("k", "a", "h1", n1.id, ttl=100)])
    assert await store.get_idempotent("k", "a", now=NOW + 99) is not None
    assert await store.get_idempotent("k", "a", now=NOW + 101) is None
    await store.create_notifications([n2], idempotency=[_claim("k", "a", "h2", n2.id, at=NOW + 101)])
    rec = await store.get_idempotent("k", "a", now=NOW + 102)
    assert rec is not None and (rec.request_hash, rec.response) == ("h2", {"id": n2.id})


async def test_a_pending_row_left_by_an_older_herald_blocks_nothing(store: SqlStore) -> None:
    from sqlalchemy import insert

    from herald.adapters.store import schema

    row = {"scope": "k", "key": "a", "request_hash": "h0", "state": "pending"}
    await store.db.run(
        lambda c: c.execute(
            insert(schema.idempotency_keys).values(**row, created_at=NOW, expires_at=NOW + 86_400)
        )
    )
    assert await store.get_idempotent("k", "a", now=NOW) is None
    n = make_notification()
    await store.create_notifications([n], idempotency=[_claim("k", "a", "h1", n.id)])
    rec = await store.get_idempotent("k", "a", now=NOW)
    assert rec is not None and rec.request_hash == "h1"


async def test_an_idempotency_key_has_one_winner_under_concurrency(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    notes = [make_notification() for _ in range(16)]

    async def attempt(i: int) -> str | None:
        try:
            await stores[i % 2].create_notifications(
                [notes[i]], idempotency=[_claim("k", "same", "h", notes[i].id)]
            )
        except IdempotencyKeyTaken as taken:
            assert taken.response is not None
            return str(taken.response["id"])
        return None

    got = await asyncio.gather(*(attempt(i) for i in range(16)))
    winners = [notes[i].id for i, r in enumerate(got) if r is None]
    assert len(winners) == 1
    assert all(r == winners[0] for r in got if r is not None)
    stored = [n.id for n in notes if await backend.store.get_notification(n.id) is not None]
    assert stored == winners


# Notifications -----------------------------------------------------------------------------------


async def test_notification_round_trip(store: SqlStore) -> None:
    inline = User(id="inline-1", email="x@example.com", locale="de", data={"k": "v"})
    n = make_notification(
        user_ids=("u1",),
        priority=Priority.HIGH,
        channels=["email", "sms"],
        send_at=NOW + 60,
        expires_at=NOW + 3600,
        dedup_key="dk",
        api_key_id="key_1",
        event_type="order_placed",
    )
    n.recipients.append(Recipient(user_id="inline-1", inline=inline))
    n.recipients_total = 2
    await store.create_notifications([n])
    got = await store.get_notification(n.id)
    assert got is not None
    assert got.status == NotificationStatus.ACCEPTED
    assert [r.user_id for r in got.recipients] == ["u1", "inline-1"]
    assert got.recipients[1].inline is not None and got.recipients[1].inline.email == "x@example.com"
    assert got.recipients[1].inline.data == {"k": "v"}
    assert (got.priority, got.channels, got.send_at, got.expires_at) == (
        Priority.HIGH,
        ["email", "sms"],
        NOW + 60,
        NOW + 3600,
    )
    assert (got.dedup_key, got.api_key_id, got.event_type) == ("dk", "key_1", "order_placed")
    assert got.content == n.content and got.data == {"code": "1234"}
    assert (got.recipients_total, got.recipients_routed, got.created_at) == (2, 0, NOW)
    assert await store.get_notification("ntf_missing") is None


async def test_list_notifications_filters_and_pages(store: SqlStore, queue: SqlQueue) -> None:
    sms_for_u2 = await seed(store, {"user_id": "u2", "channel": "sms", "address": "+33612345678"})
    (email_u1,) = await seed(store, {"user_id": "u1"})
    await settle(store, queue, (email_u1, S.SENT))
    accepted = make_notification(user_ids=("u3",), created_at=NOW + 100)
    await store.create_notifications([accepted])

    async def ids(**kw: object) -> set[str]:
        return {n.id for n in await store.list_notifications(NotificationFilter(**kw))}  # type: ignore[arg-type]

    everything = await ids()
    assert len(everything) == 3
    assert await ids(user_id="u2") == {sms_for_u2[0].notification_id}
    assert await ids(channel="sms") == {sms_for_u2[0].notification_id}
    assert await ids(delivery_status="sent") == {email_u1.notification_id}
    assert await ids(status="accepted") == {accepted.id}  # a notification status
    assert await ids(status="routed", user_id="u1") == {email_u1.notification_id}
    # Routed, as the API shows it: completed once every delivery is final, else in progress.
    assert await ids(status="completed") == {email_u1.notification_id}
    assert await ids(status="in_progress") == {sms_for_u2[0].notification_id}
    assert await ids(status="in_progress", channel="email") == set()
    assert await store.notifications_in_progress(
        [n.id for n in await store.list_notifications(NotificationFilter())]
    ) == {sms_for_u2[0].notification_id}
    assert await ids(since=NOW + 50) == {accepted.id}
    assert await ids(until=NOW + 50) == everything - {accepted.id}
    # cursor pagination: newest first, disjoint pages that cover everything
    page1 = await store.list_notifications(NotificationFilter(limit=2))
    assert len(page1) == 2 and page1[0].id > page1[1].id
    page2 = await store.list_notifications(NotificationFilter(limit=2, cursor=page1[-1].id))
    assert {n.id for n in page1} | {n.id for n in page2} == everything
    assert len(page2) == 1


# Routing -------------------------------------------------------------------------------------------


async def test_claim_unrouted_leases_by_priority(store: SqlStore) -> None:
    low = make_notification(priority=Priority.LOW, created_at=NOW)
    crit = make_notification(priority=Priority.CRITICAL, created_at=NOW + 5)
    normal = make_notification(priority=Priority.NORMAL, created_at=NOW + 1)
    await store.create_notifications([low, crit, normal])
    first = await store.claim_unrouted(owner="r1", limit=2, lease=60, now=NOW)
    assert [n.id for n in first] == [crit.id, normal.id]
    assert all(n.status == NotificationStatus.ROUTING for n in first)
    second = await store.claim_unrouted(owner="r2", limit=10, lease=60, now=NOW)
    assert [n.id for n in second] == [low.id]
    assert await store.claim_unrouted(owner="r3", limit=10, lease=60, now=NOW + 59) == []


async def test_claim_unrouted_from_a_lane_down_leaves_higher_lanes(store: SqlStore) -> None:
    """A bulk worker's router (``min_rank=2``) leaves critical and high to the others."""
    crit = make_notification(priority=Priority.CRITICAL, created_at=NOW)
    high = make_notification(priority=Priority.HIGH, created_at=NOW)
    low = make_notification(priority=Priority.LOW, created_at=NOW + 1)
    await store.create_notifications([crit, high, low])
    bulk = await store.claim_unrouted(owner="bulk", limit=10, lease=60, now=NOW, min_rank=2)
    assert [n.id for n in bulk] == [low.id]
    urgent = await store.claim_unrouted(owner="urgent", limit=10, lease=60, now=NOW)
    assert {n.id for n in urgent} == {crit.id, high.id}


async def test_expired_routing_lease_is_taken_over_and_the_old_owner_loses(store: SqlStore) -> None:
    n = make_notification(user_ids=("a", "b"))
    await store.create_notifications([n])
    assert len(await store.claim_unrouted(owner="r1", limit=10, lease=30, now=NOW)) == 1
    d_a = make_delivery(n.id, user_id="a")
    assert await store.save_routed(
        RoutedBatch(n.id, [d_a], recipients_done=1, finished=False), owner="r1", now=NOW, lease=30
    )
    # r1 renewed its lease to NOW+30 with that chunk; at NOW+31 it has expired
    assert await store.claim_unrouted(owner="r2", limit=10, lease=30, now=NOW + 29) == []
    (taken,) = await store.claim_unrouted(owner="r2", limit=10, lease=30, now=NOW + 31)
    assert taken.id == n.id and taken.recipients_routed == 1
    # the old owner's next chunk is refused and writes nothing
    d_b_by_r1 = make_delivery(n.id, user_id="b")
    assert not await store.save_routed(
        RoutedBatch(n.id, [d_b_by_r1], recipients_done=2, finished=True), owner="r1", now=NOW + 32
    )
    assert {d.user_id for d in await store.get_deliveries(n.id)} == {"a"}
    # the new owner re-saves the first chunk (it cannot know it was written) and the second
    again = [make_delivery(n.id, user_id="a"), make_delivery(n.id, user_id="b")]
    assert await store.save_routed(
        RoutedBatch(n.id, again, recipients_done=2, finished=True), owner="r2", now=NOW + 33
    )
    deliveries = await store.get_deliveries(n.id)
    assert sorted(d.user_id for d in deliveries) == ["a", "b"]  # "a" once, not twice
    assert next(d for d in deliveries if d.user_id == "a").id == d_a.id
    got = await store.get_notification(n.id)
    assert got is not None
    assert (got.status, got.recipients_routed, got.routed_at) == (NotificationStatus.ROUTED, 2, NOW + 33)


async def test_save_routed_is_idempotent_for_the_same_deliveries(store: SqlStore) -> None:
    n = make_notification(user_ids=("a",))
    await store.create_notifications([n])
    await store.claim_unrouted(owner="r", limit=1, lease=30, now=NOW)
    ds = [make_delivery(n.id, user_id="a"), make_delivery(n.id, user_id="a", channel="sms")]
    batch = RoutedBatch(n.id, ds, recipients_done=1, finished=False, recipients_total=1)
    assert await store.save_routed(batch, owner="r", now=NOW)
    assert await store.save_routed(batch, owner="r", now=NOW + 1)
    assert len(await store.get_deliveries(n.id)) == 2
    assert await store.save_routed(
        RoutedBatch(n.id, [], recipients_done=1, finished=True), owner="r", now=NOW + 2
    )
    # routed: nobody holds the lease any more
    assert not await store.save_routed(batch, owner="r", now=NOW + 3)
    assert len(await store.get_deliveries(n.id)) == 2


async def test_save_routed_renews_the_lease_and_records_totals(store: SqlStore) -> None:
    n = make_notification(user_ids=("a",), topic="news")
    await store.create_notifications([n])
    await store.claim_unrouted(owner="r", limit=1, lease=10, now=NOW)
    assert await store.save_routed(
        RoutedBatch(n.id, [], recipients_done=500, finished=False, recipients_total=1200),
        owner="r",
        now=NOW + 9,
        lease=10,
    )
    assert await store.claim_unrouted(owner="other", limit=1, lease=10, now=NOW + 15) == []
    got = await store.get_notification(n.id)
    assert got is not None
    assert (got.status, got.recipients_routed, got.recipients_total) == (
        NotificationStatus.ROUTING,
        500,
        1200,
    )


async def test_claim_unrouted_concurrently_is_disjoint(backend: SqlBackend) -> None:
    store = backend.store
    notes = [make_notification(created_at=NOW + i) for i in range(60)]
    await store.create_notifications(notes)
    stores = [store, await backend.connect(), await backend.connect()]
    got = await asyncio.gather(
        *(stores[i % 3].claim_unrouted(owner=f"r{i}", limit=7, lease=60, now=NOW + 100) for i in range(12))
    )
    ids = [n.id for batch in got for n in batch]
    assert len(ids) == len(set(ids)) == 60


async def test_fail_routing(store: SqlStore) -> None:
    n = make_notification()
    await store.create_notifications([n])
    await store.claim_unrouted(owner="r", limit=1, lease=30, now=NOW)
    await store.fail_routing(n.id, "template vanished", now=NOW)
    got = await store.get_notification(n.id)
    assert got is not None and (got.status, got.error) == (NotificationStatus.FAILED, "template vanished")
    assert await store.claim_unrouted(owner="r", limit=1, lease=30, now=NOW + 100) == []


# Cancel ----------------------------------------------------------------------------------------------


async def test_cancel_cancels_only_unsent_deliveries(store: SqlStore, queue: SqlQueue) -> None:
    n = make_notification(user_ids=("a", "b", "c", "d", "e"))
    await store.create_notifications([n])
    await store.claim_unrouted(owner="r", limit=1, lease=30, now=NOW)
    sent = make_delivery(n.id, user_id="a")
    sending = make_delivery(n.id, user_id="b", channel="sms", address="+33600000000")
    queued = make_delivery(n.id, user_id="c", channel="push", address="tok")
    scheduled = make_delivery(n.id, user_id="d", channel="push", status=S.SCHEDULED, due_at=NOW + 600)
    retrying = make_delivery(n.id, user_id="e", channel="webhook", address="https://x.example")
    rows = [sent, sending, queued, scheduled, retrying]
    assert await store.save_routed(
        RoutedBatch(n.id, rows, recipients_done=5, finished=True), owner="r", now=NOW
    )
    await settle(store, queue, (sent, S.SENT), (retrying, S.RETRYING), due_at=NOW + 60)
    assert [d.id for d in await queue.claim("sms", owner="w", limit=5, max_rank=3, lease=30, now=NOW)] == [
        sending.id
    ]

    cancelled, already_final = await store.cancel_notification(n.id, now=NOW + 1)
    assert cancelled == 3  # queued, scheduled, retrying
    assert already_final == 2  # sent, and sending: left as they are
    status = {d.user_id: d.status for d in await store.get_deliveries(n.id)}
    assert status == {"a": S.SENT, "b": S.SENDING, "c": S.CANCELLED, "d": S.CANCELLED, "e": S.CANCELLED}
    reasons = {d.user_id: d.reason for d in await store.get_deliveries(n.id)}
    assert reasons["c"] == "cancelled"
    # nothing cancelled is ever claimed, promoted or reclaimed
    assert await queue.claim("push", owner="w", limit=5, max_rank=3, lease=30, now=NOW + 1000) == []
    assert await queue.claim("webhook", owner="w", limit=5, max_rank=3, lease=30, now=NOW + 1000) == []
    assert (await store.promote_scheduled(now=NOW + 1000)).channels == []
    again = await store.cancel_notification(n.id, now=NOW + 2)
    assert again[0] == 0
    with pytest.raises(NotFound):
        await store.cancel_notification("ntf_missing", now=NOW)


async def test_cancel_before_routing_stops_the_router(store: SqlStore) -> None:
    n = make_notification(user_ids=("a", "b"))
    await store.create_notifications([n])
    await store.claim_unrouted(owner="r", limit=1, lease=30, now=NOW)
    first = make_delivery(n.id, user_id="a")
    assert await store.save_routed(
        RoutedBatch(n.id, [first], recipients_done=1, finished=False), owner="r", now=NOW
    )
    assert await store.cancel_notification(n.id, now=NOW + 1) == (1, 0)
    got = await store.get_notification(n.id)
    assert got is not None and got.status == NotificationStatus.CANCELLED
    second = make_delivery(n.id, user_id="b")
    assert not await store.save_routed(
        RoutedBatch(n.id, [second], recipients_done=2, finished=True), owner="r", now=NOW + 2
    )
    assert [d.user_id for d in await store.get_deliveries(n.id)] == ["a"]
    assert await store.claim_unrouted(owner="r2", limit=1, lease=30, now=NOW + 100) == []

    accepted = make_notification()
    await store.create_notifications([accepted])
    assert await store.cancel_notification(accepted.id, now=NOW) == (0, 0)
    assert await store.claim_unrouted(owner="r", limit=10, lease=30, now=NOW) == []


# Routing in bulk, dedup, recipient context, callbacks ---------------------------------------------


async def test_save_routed_many_applies_only_the_batches_whose_lease_is_held(store: SqlStore) -> None:
    mine, theirs, done_now = (make_notification(user_ids=("a",)) for _ in range(3))
    await store.create_notifications([mine, done_now])
    assert len(await store.claim_unrouted(owner="me", limit=10, lease=30, now=NOW)) == 2
    await store.create_notifications([theirs])
    assert len(await store.claim_unrouted(owner="other", limit=10, lease=30, now=NOW)) == 1
    ok = await store.save_routed_many(
        [
            RoutedBatch(mine.id, [make_delivery(mine.id, user_id="a")], recipients_done=1, finished=False),
            RoutedBatch(theirs.id, [make_delivery(theirs.id, user_id="a")], recipients_done=1, finished=True),
            RoutedBatch(
                done_now.id, [make_delivery(done_now.id, user_id="a")], recipients_done=1, finished=True
            ),
        ],
        owner="me",
        now=NOW + 1,
    )
    assert ok == [True, False, True]
    assert len(await store.get_deliveries(mine.id)) == 1
    assert await store.get_deliveries(theirs.id) == []
    got = {x.id: await store.get_notification(x.id) for x in (mine, theirs, done_now)}
    assert got[mine.id] is not None and got[mine.id].status == NotificationStatus.ROUTING  # type: ignore[union-attr]
    assert got[done_now.id] is not None and got[done_now.id].status == NotificationStatus.ROUTED  # type: ignore[union-attr]
    assert got[theirs.id] is not None and got[theirs.id].status == NotificationStatus.ROUTING  # type: ignore[union-attr]


async def test_dedup_key_skips_the_same_user_within_the_window(store: SqlStore) -> None:
    async def route(user_ids: tuple[str, ...], now: float) -> dict[str, tuple[S, str | None]]:
        n = make_notification(user_ids=user_ids, dedup_key="order-42")
        await store.create_notifications([n])
        await store.claim_unrouted(owner="r", limit=10, lease=30, now=now)
        ds = [make_delivery(n.id, user_id=u) for u in user_ids]
        batch = RoutedBatch(
            n.id, ds, recipients_done=len(ds), finished=True, dedup_key="order-42", dedup_window=600
        )
        assert await store.save_routed(batch, owner="r", now=now)
        return {d.user_id: (d.status, d.reason) for d in await store.get_deliveries(n.id)}

    assert await route(("a", "b"), NOW) == {"a": (S.QUEUED, None), "b": (S.QUEUED, None)}
    assert await route(("b", "c"), NOW + 10) == {"b": (S.SKIPPED, "duplicate"), "c": (S.QUEUED, None)}
    assert await route(("a",), NOW + 601) == {"a": (S.QUEUED, None)}  # the window has passed


async def test_dedup_key_has_one_winner_under_concurrency(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    notes = [make_notification(user_ids=("u",), dedup_key="k") for _ in range(6)]
    await backend.store.create_notifications(notes)
    await backend.store.claim_unrouted(owner="r", limit=10, lease=30, now=NOW)
    await asyncio.gather(
        *(
            stores[i % 2].save_routed(
                RoutedBatch(
                    n.id, [make_delivery(n.id, user_id="u")], recipients_done=1, finished=True, dedup_key="k"
                ),
                owner="r",
                now=NOW,
            )
            for i, n in enumerate(notes)
        )
    )
    statuses = [d.status for n in notes for d in await backend.store.get_deliveries(n.id)]
    assert sorted(statuses) == [S.QUEUED] + [S.SKIPPED] * 5


async def test_recipient_context(store: SqlStore) -> None:
    await store.put_user(make_user("a"))
    await store.put_user(User(id="b", phone="+33699999999", updated_at=NOW))
    await store.put_preferences(Preferences(user_id="a", channels={"sms": False}))
    dev = await store.add_device(
        Device(id=new_id("dev"), user_id="a", kind="fcm", token="t1", created_at=NOW)
    )
    await store.suppress_address("email", "a@example.com", "bounced", now=NOW)
    await store.suppress_address("sms", "+33699999999", "unsubscribed", now=NOW)
    await store.suppress_address("email", "stranger@example.com", "bounced", now=NOW)
    ctx = await store.recipient_context(["a", "b", "missing", "a"], with_devices=True)
    assert set(ctx.users) == {"a", "b"}
    assert ctx.preferences["a"].channels == {"sms": False} and "b" not in ctx.preferences
    assert [d.id for d in ctx.devices["a"]] == [dev.id]
    assert ctx.suppressed == {"email": {"a@example.com"}, "sms": {"+33699999999"}}
    without = await store.recipient_context(["a"], with_devices=False)
    assert without.devices == {}


async def test_first_seen(store: SqlStore) -> None:
    assert await store.first_seen("twilio:SM1:delivered", ttl=600, now=NOW) is True
    assert await store.first_seen("twilio:SM1:delivered", ttl=600, now=NOW + 1) is False
    assert await store.first_seen("twilio:SM1:read", ttl=600, now=NOW + 1) is True
    assert await store.first_seen("twilio:SM1:delivered", ttl=600, now=NOW + 601) is True  # expired


async def test_first_seen_has_one_winner_under_concurrency(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    got = await asyncio.gather(*(stores[i % 2].first_seen("evt", ttl=60, now=NOW) for i in range(10)))
    assert got.count(True) == 1
