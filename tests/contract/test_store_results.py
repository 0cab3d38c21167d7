"""The Store port's contract for results (recording sends, tracking, the scheduler's sweeps, dead
letters, the inbox, counts), on every adapter (memory, sqlite, postgres).
"""

from __future__ import annotations

import pytest

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.domain.errors import IllegalTransition, NotFound
from herald.domain.models import (
    Outcome,
    Priority,
)
from herald.ports import DeadLetterFilter
from tests.contract.conftest import (
    NOW,
    S,
    result,
    seed,
    settle,
)

# Deliveries and results -----------------------------------------------------------------------------


async def test_get_delivery_and_deliveries(store: SqlStore) -> None:
    a, b = await seed(store, {"user_id": "a"}, {"user_id": "b", "channel": "sms", "address": "+336"})
    got = await store.get_delivery(a.id)
    assert got is not None
    assert (got.notification_id, got.user_id, got.channel, got.status, got.priority) == (
        a.notification_id,
        "a",
        "email",
        S.QUEUED,
        Priority.NORMAL,
    )
    assert (got.address, got.content, got.attempts, got.due_at, got.queued_at) == (
        "a@example.com",
        a.content,
        [],
        NOW,
        NOW,
    )
    listed = await store.get_deliveries(a.notification_id, with_attempts=False)
    assert {d.id for d in listed} == {a.id, b.id}
    assert await store.get_delivery("dlv_missing") is None
    assert await store.get_deliveries("ntf_missing") == []


async def test_record_results_applies_results_of_the_lease_holder(store: SqlStore, queue: SqlQueue) -> None:
    a, b, c = await seed(store, {}, {}, {})
    claimed = await queue.claim("email", owner="w1", limit=10, max_rank=3, lease=30, now=NOW)
    assert {d.id for d in claimed} == {a.id, b.id, c.id}
    rejected = await store.record_results(
        [
            result(a, "w1", S.SENT, at=NOW + 1, provider_message_id="pm-1"),
            result(b, "w1", S.RETRYING, at=NOW + 1, due_at=NOW + 61, reason="timeout"),
            result(c, "w1", S.DEAD, at=NOW + 1, reason="retries_exhausted"),
        ],
        now=NOW + 2,
    )
    assert rejected == []
    sent, retrying, dead = [await store.get_delivery(x.id) for x in (a, b, c)]
    assert sent is not None and retrying is not None and dead is not None
    assert (sent.status, sent.sent_at, sent.provider, sent.provider_message_id) == (
        S.SENT,
        NOW + 1,
        "smtp",
        "pm-1",
    )
    assert (sent.attempts_made, sent.budget_used) == (1, 1)
    assert sent.attempts[0].outcome == Outcome.OK and sent.attempts[0].code == "250"
    assert sent.attempts[0].latency_ms == 3.0 and sent.attempts[0].ambiguous is False
    assert (retrying.status, retrying.due_at, retrying.reason) == (S.RETRYING, NOW + 61, "timeout")
    assert (dead.status, dead.failed_at, dead.reason) == (S.DEAD, NOW + 2, "retries_exhausted")


async def test_record_results_refuses_a_result_whose_lease_changed(store: SqlStore, queue: SqlQueue) -> None:
    (a,) = await seed(store, {})
    await queue.claim("email", owner="w1", limit=1, max_rank=3, lease=30, now=NOW)
    # w1 stalls; its lease expires and the delivery goes to another worker
    assert await store.reclaim_expired_leases(now=NOW + 31) == ["email"]
    (again,) = await queue.claim("email", owner="w2", limit=1, max_rank=3, lease=30, now=NOW + 31)
    assert again.id == a.id
    late = result(a, "w1", S.SENT, at=NOW + 40, n=1)
    assert await store.record_results([late], now=NOW + 40) == [a.id]
    got = await store.get_delivery(a.id)
    assert got is not None and got.status == S.SENDING  # still w2's
    assert [x.outcome for x in got.attempts] == [Outcome.LOST]  # w1's late result left no attempt
    ok = result(a, "w2", S.SENT, at=NOW + 41, n=2)
    assert await store.record_results([ok], now=NOW + 41) == []
    # a second result for a finished delivery is refused too (no longer sending)
    assert await store.record_results([result(a, "w2", S.FAILED, n=3)], now=NOW + 42) == [a.id]
    got = await store.get_delivery(a.id)
    assert got is not None and got.status == S.SENT and [x.n for x in got.attempts] == [1, 2]


async def test_record_results_in_one_batch_counts_a_repeated_result_once(
    store: SqlStore, queue: SqlQueue
) -> None:
    a, b, c = await seed(store, {}, {}, {})
    await queue.claim("email", owner="w1", limit=3, max_rank=3, lease=30, now=NOW)
    rejected = await store.record_results(
        [
            result(a, "w1", S.RETRYING, at=NOW + 1, due_at=NOW + 61, reason="timeout"),
            result(b, "someone-else", S.SENT, at=NOW + 1),  # not b's lease holder
            result(a, "w1", S.SENT, at=NOW + 2),  # given again in the same batch
            result(c, "w1", S.SENT, at=NOW + 1, provider_message_id="pm-c"),
        ],
        now=NOW + 2,
    )
    assert rejected == [b.id, a.id]
    got_a, got_b, got_c = [await store.get_delivery(x.id) for x in (a, b, c)]
    assert got_a is not None and got_b is not None and got_c is not None
    assert (got_a.status, got_a.due_at, [x.n for x in got_a.attempts]) == (S.RETRYING, NOW + 61, [1])
    assert (got_b.status, got_b.attempts) == (S.SENDING, [])
    assert (got_c.status, got_c.provider_message_id, got_c.sent_at) == (S.SENT, "pm-c", NOW + 1)


async def test_times_given_as_whole_numbers_mix_with_fractional_ones(
    store: SqlStore, queue: SqlQueue
) -> None:
    # PostgreSQL takes a batch's times as one binary array per column, which must be all floats.
    a, b = await seed(store, {"due_at": 1_800_000_000}, {"due_at": NOW - 0.5})
    assert len(await queue.claim("email", owner="w", limit=2, max_rank=3, lease=30, now=NOW)) == 2
    results = [
        result(a, "w", S.RETRYING, at=NOW, due_at=1_800_000_060),
        result(b, "w", S.RETRYING, at=NOW, due_at=NOW + 60.5),
    ]
    assert await store.record_results(results, now=NOW) == []
    got = [await store.get_delivery(x.id) for x in (a, b)]
    assert [(x.status, x.due_at) for x in got if x is not None] == [
        (S.RETRYING, NOW + 60),
        (S.RETRYING, NOW + 60.5),
    ]


async def test_record_results_rejects_an_illegal_status(store: SqlStore, queue: SqlQueue) -> None:
    (a,) = await seed(store, {})
    await queue.claim("email", owner="w", limit=1, max_rank=3, lease=30, now=NOW)
    with pytest.raises(IllegalTransition):
        await store.record_results([result(a, "w", S.DELIVERED)], now=NOW)
    got = await store.get_delivery(a.id)
    assert got is not None and got.status == S.SENDING and got.attempts == []


async def test_record_results_budget_and_long_codes(store: SqlStore, queue: SqlQueue) -> None:
    (a,) = await seed(store, {})
    await queue.claim("email", owner="w", limit=1, max_rank=3, lease=30, now=NOW)
    r = result(a, "w", S.RETRYING, due_at=NOW + 5, counts_against_budget=False)
    r.attempt.code = "messaging/" + "x" * 200  # providers' error names can be long
    r.attempt.detail = "d" * 5000
    assert await store.record_results([r], now=NOW) == []
    got = await store.get_delivery(a.id)
    assert got is not None
    assert (got.attempts_made, got.budget_used) == (1, 0)
    stored = got.attempts[0]
    assert stored.code is not None and r.attempt.code.startswith(stored.code) and len(stored.code) >= 32
    assert stored.detail == "d" * 5000


async def test_dead_address_is_suppressed(store: SqlStore, queue: SqlQueue) -> None:
    (a,) = await seed(store, {"address": "gone@example.com"})
    await settle(store, queue, (a, S.FAILED), reason="invalid_address", dead_address="gone@example.com")
    assert await store.suppressed("email", ["gone@example.com", "ok@example.com"]) == {"gone@example.com"}
    assert await store.suppressed("sms", ["gone@example.com"]) == set()


# Tracking ------------------------------------------------------------------------------------------


async def test_mark_delivery_follows_the_state_machine(store: SqlStore, queue: SqlQueue) -> None:
    a, b = await seed(store, {"user_id": "u1"}, {"user_id": "u1", "channel": "sms", "address": "+336"})
    await settle(store, queue, (a, S.SENT))
    delivered = await store.mark_delivery(a.id, S.DELIVERED, now=NOW + 5)
    assert (delivered.status, delivered.delivered_at) == (S.DELIVERED, NOW + 5)
    read = await store.mark_delivery(a.id, S.READ, now=NOW + 9, user_id="u1")
    assert (read.status, read.read_at, read.delivered_at) == (S.READ, NOW + 9, NOW + 5)
    # repeated and late events change nothing
    assert (await store.mark_delivery(a.id, S.READ, now=NOW + 20)).read_at == NOW + 9
    assert (await store.mark_delivery(a.id, S.DELIVERED, now=NOW + 20)).status == S.READ
    # b was never sent: it cannot be read
    with pytest.raises(IllegalTransition):
        await store.mark_delivery(b.id, S.READ, now=NOW)
    unchanged = await store.get_delivery(b.id)
    assert unchanged is not None and unchanged.status == S.QUEUED
    with pytest.raises(NotFound):
        await store.mark_delivery(a.id, S.READ, now=NOW, user_id="someone-else")
    with pytest.raises(NotFound):
        await store.mark_delivery("dlv_missing", S.DELIVERED, now=NOW)


async def test_read_without_delivered_stamps_both(store: SqlStore, queue: SqlQueue) -> None:
    (a,) = await seed(store, {"channel": "in_app"})
    await settle(store, queue, (a, S.SENT))
    read = await store.mark_delivery(a.id, S.READ, now=NOW + 3)
    assert (read.read_at, read.delivered_at) == (NOW + 3, NOW + 3)


# Scheduler ------------------------------------------------------------------------------------------


async def test_promote_scheduled_in_chunks_takes_the_highest_lane_first(store: SqlStore) -> None:
    specs = [{"status": S.SCHEDULED, "due_at": NOW - 50 + i, "priority": Priority.LOW} for i in range(6)]
    sms = {"channel": "sms", "address": "+33612345678"}
    specs += [
        {"status": S.SCHEDULED, "due_at": NOW, "priority": Priority.CRITICAL, **sms},
        {"status": S.SCHEDULED, "due_at": NOW - 1, "priority": Priority.NORMAL},
        {"status": S.SCHEDULED, "due_at": NOW + 60, "priority": Priority.LOW},  # not due
        {"status": S.SCHEDULED, "due_at": NOW - 99, "priority": Priority.LOW, "reason": "digest"},  # held
    ]
    *lows, crit, normal, later, held = await seed(store, *specs)

    async def statuses() -> dict[str, S]:
        out = {}
        for d in (*lows, crit, normal, later, held):
            got = await store.get_delivery(d.id)
            assert got is not None
            out[d.id] = got.status
        return out

    first = await store.promote_scheduled(now=NOW, limit=3)
    assert (first.channels, first.count) == (["email", "sms"], 3)
    now = await statuses()
    assert [d.id for d in (*lows, crit, normal) if now[d.id] == S.QUEUED] == [lows[0].id, crit.id, normal.id]
    bulk = await store.promote_scheduled(now=NOW, limit=10, ranks=[2, 3])
    assert bulk.count == 5  # the other lows; neither the one not due nor the held one
    assert (await store.promote_scheduled(now=NOW, limit=10)).count == 0
    now = await statuses()
    assert now[later.id] == S.SCHEDULED and now[held.id] == S.SCHEDULED
    assert all(now[d.id] == S.QUEUED for d in lows)


async def test_promote_scheduled_moves_only_due_ones(store: SqlStore, queue: SqlQueue) -> None:
    soon, later, sms = await seed(
        store,
        {"status": S.SCHEDULED, "due_at": NOW + 60},
        {"status": S.SCHEDULED, "due_at": NOW + 3600},
        {"status": S.SCHEDULED, "due_at": NOW + 30, "channel": "sms", "address": "+336"},
    )
    assert await queue.claim("email", owner="w", limit=10, max_rank=3, lease=30, now=NOW + 100) == []
    assert (await store.promote_scheduled(now=NOW + 59)).channels == ["sms"]
    assert (await store.promote_scheduled(now=NOW + 60)).channels == ["email"]
    assert (await store.promote_scheduled(now=NOW + 61)).channels == []
    got = await store.get_delivery(soon.id)
    assert got is not None and (got.status, got.queued_at) == (S.QUEUED, NOW + 60)
    got = await store.get_delivery(later.id)
    assert got is not None and got.status == S.SCHEDULED
    assert [
        d.id for d in await queue.claim("email", owner="w", limit=10, max_rank=3, lease=30, now=NOW + 60)
    ] == [soon.id]
    assert sms.id


async def test_expire_deliveries(store: SqlStore, queue: SqlQueue) -> None:
    sending, retrying = await seed(
        store, {"expires_at": NOW + 10}, {"channel": "sms", "address": "+336", "expires_at": NOW + 10}
    )
    await settle(store, queue, (retrying, S.RETRYING), due_at=NOW + 100)
    await queue.claim("email", owner="w", limit=10, max_rank=3, lease=300, now=NOW)
    queued, scheduled, keeps, no_expiry = await seed(
        store,
        {"expires_at": NOW + 10},
        {"status": S.SCHEDULED, "due_at": NOW + 50, "expires_at": NOW + 10},
        {"expires_at": NOW + 1000},
        {},
    )
    assert await store.expire_deliveries(now=NOW + 9) == 0
    assert await store.expire_deliveries(now=NOW + 10) == 3
    statuses = {
        x.id: (x.status, x.reason)
        for x in [
            await store.get_delivery(d.id) for d in (sending, retrying, queued, scheduled, keeps, no_expiry)
        ]
        if x is not None
    }
    assert statuses == {
        sending.id: (S.SENDING, None),  # the worker decides: it checks expiry before sending
        retrying.id: (S.SKIPPED, "expired"),
        queued.id: (S.SKIPPED, "expired"),
        scheduled.id: (S.SKIPPED, "expired"),
        keeps.id: (S.QUEUED, None),
        no_expiry.id: (S.QUEUED, None),
    }
    assert await store.expire_deliveries(now=NOW + 10) == 0


async def test_reclaim_expired_leases_records_an_ambiguous_lost_attempt(
    store: SqlStore, queue: SqlQueue
) -> None:
    (a,) = await seed(store, {})
    await queue.claim("email", owner="w", limit=1, max_rank=3, lease=30, now=NOW)
    assert await store.reclaim_expired_leases(now=NOW + 30) == []  # not yet expired
    assert await store.ambiguous_count() == 0
    assert await store.reclaim_expired_leases(now=NOW + 31) == ["email"]
    got = await store.get_delivery(a.id)
    assert got is not None
    assert (got.status, got.due_at, got.attempts_made, got.budget_used) == (S.RETRYING, NOW + 31, 1, 1)
    (lost,) = got.attempts
    assert (lost.n, lost.outcome, lost.ambiguous, lost.at) == (1, Outcome.LOST, True, NOW + 31)
    assert await store.ambiguous_count() == 1
    assert await store.reclaim_expired_leases(now=NOW + 100) == []


async def test_next_due(store: SqlStore, queue: SqlQueue) -> None:
    assert await store.next_due(now=NOW) is None
    (r,) = await seed(store, {})
    await settle(store, queue, (r, S.RETRYING), due_at=NOW + 300)
    await seed(store, {"status": S.SCHEDULED, "due_at": NOW + 500})
    assert await store.next_due(now=NOW) == NOW + 300
    assert await store.next_due(now=NOW + 300) == NOW + 500  # only future times
    await seed(store, {"channel": "sms", "address": "+336"})
    await queue.claim("sms", owner="w", limit=1, max_rank=3, lease=30, now=NOW)
    assert await store.next_due(now=NOW) == NOW + 30  # a lease to reclaim when it runs out


# Dead letters --------------------------------------------------------------------------------------


async def test_dead_letters_list_and_replay_keep_history(store: SqlStore, queue: SqlQueue) -> None:
    a, b = await seed(store, {}, {})
    c = (await seed(store, {"channel": "sms", "address": "+336"}))[0]
    await settle(
        store, queue, (a, S.DEAD), (b, S.DEAD), (c, S.DEAD), reason="retries_exhausted", now=NOW + 10
    )
    (alive,) = await seed(store, {})
    listed = await store.list_dead_letters(DeadLetterFilter())
    assert {d.id for d in listed} == {a.id, b.id, c.id}
    assert [d.id for d in listed] == sorted((d.id for d in listed), reverse=True)
    assert {d.id for d in await store.list_dead_letters(DeadLetterFilter(channel="sms"))} == {c.id}
    assert len(await store.list_dead_letters(DeadLetterFilter(provider="smtp"))) == 3
    assert await store.list_dead_letters(DeadLetterFilter(provider="ses")) == []
    assert len(await store.list_dead_letters(DeadLetterFilter(reason="retries_exhausted"))) == 3
    assert await store.list_dead_letters(DeadLetterFilter(since=NOW + 11)) == []
    assert len(await store.list_dead_letters(DeadLetterFilter(since=NOW + 10, until=NOW + 11))) == 3
    page1 = await store.list_dead_letters(DeadLetterFilter(limit=2))
    page2 = await store.list_dead_letters(DeadLetterFilter(limit=2, cursor=page1[-1].id))
    assert len(page1) == 2 and len(page2) == 1
    assert {d.id for d in page1 + page2} == {a.id, b.id, c.id}

    replayed = await store.replay_dead_letters([a.id, alive.id, "dlv_missing"], now=NOW + 20)
    assert [d.id for d in replayed] == [a.id]  # only dead ones
    got = await store.get_delivery(a.id)
    assert got is not None
    assert (got.status, got.reason, got.budget_used, got.due_at, got.failed_at) == (
        S.QUEUED,
        None,
        0,
        NOW + 20,
        None,
    )
    assert got.attempts_made == 1 and len(got.attempts) == 1  # history kept
    claimed = await queue.claim("email", owner="w", limit=10, max_rank=3, lease=30, now=NOW + 20)
    assert {d.id for d in claimed} == {a.id, alive.id}
    assert await store.record_results([result(a, "w", S.SENT, n=2, at=NOW + 21)], now=NOW + 21) == []
    got = await store.get_delivery(a.id)
    assert got is not None and [x.n for x in got.attempts] == [1, 2] and got.status == S.SENT
    assert {d.id for d in await store.list_dead_letters(DeadLetterFilter())} == {b.id, c.id}


# Inbox ------------------------------------------------------------------------------------------------


async def test_inbox_lists_sent_in_app_items_newest_first(store: SqlStore, queue: SqlQueue) -> None:
    items = [await seed(store, {"user_id": "u1", "channel": "in_app", "address": "u1"}) for _ in range(4)]
    ds = [x[0] for x in items]
    await settle(store, queue, *((d, S.SENT) for d in ds))
    (other_user,) = await seed(store, {"user_id": "u2", "channel": "in_app", "address": "u2"})
    (unsent,) = await seed(store, {"user_id": "u1", "channel": "in_app", "address": "u1"})
    (email,) = await seed(store, {"user_id": "u1"})
    await settle(store, queue, (email, S.SENT))
    await store.mark_delivery(ds[0].id, S.READ, now=NOW + 1)

    listed, unread = await store.list_inbox("u1", unread_only=False, cursor=None, limit=10)
    assert unread == 3
    assert {d.id for d in listed} == {d.id for d in ds}
    assert other_user.id not in {d.id for d in listed} and unsent.id not in {d.id for d in listed}
    assert [d.id for d in listed] == sorted((d.id for d in listed), reverse=True)
    only_unread, _ = await store.list_inbox("u1", unread_only=True, cursor=None, limit=10)
    assert {d.id for d in only_unread} == {d.id for d in ds[1:]}
    page1, _ = await store.list_inbox("u1", unread_only=False, cursor=None, limit=3)
    page2, _ = await store.list_inbox("u1", unread_only=False, cursor=page1[-1].id, limit=3)
    assert len(page1) == 3 and len(page2) == 1 and {d.id for d in page1 + page2} == {d.id for d in ds}

    assert await store.mark_all_read("u1", now=NOW + 5) == 3
    assert (await store.list_inbox("u1", unread_only=False, cursor=None, limit=10))[1] == 0
    assert await store.mark_all_read("u1", now=NOW + 6) == 0
    got = await store.get_delivery(ds[1].id)
    assert got is not None and (got.status, got.read_at) == (S.READ, NOW + 5)
    mail = await store.get_delivery(email.id)
    assert mail is not None and mail.status == S.SENT  # the inbox is in_app only
    assert (await store.list_inbox("u2", unread_only=True, cursor=None, limit=10))[1] == 0


# Stats ---------------------------------------------------------------------------------------------


async def test_delivery_counts_and_queue_depth(store: SqlStore, queue: SqlQueue) -> None:
    sent1, sent2 = await seed(store, {}, {})
    await settle(store, queue, (sent1, S.SENT), (sent2, S.SENT))
    await seed(
        store,
        {},
        {"priority": Priority.CRITICAL},
        {"priority": Priority.CRITICAL},
        {"channel": "sms", "address": "+336", "priority": Priority.LOW},
        {"status": S.SCHEDULED, "due_at": NOW + 100},
    )
    counts = {(ch, st, pr): n for ch, st, pr, n in await store.delivery_counts()}
    assert counts == {
        ("email", "sent", "smtp"): 2,
        ("email", "queued", None): 3,
        ("email", "scheduled", None): 1,
        ("sms", "queued", None): 1,
    }
    assert await store.delivery_counts(since=NOW + 1) == []
    depth = sorted(await store.queue_depth())
    assert depth == [("email", 0, 2), ("email", 2, 1), ("sms", 3, 1)]
    assert await store.ambiguous_count() == 0


async def test_find_delivery_by_provider_message_id(store: SqlStore, queue: SqlQueue) -> None:
    (a,) = await seed(store, {})
    await settle(store, queue, (a, S.SENT), provider_message_id="sg-123")
    found = await store.find_delivery("sg-123")
    assert found is not None and found.id == a.id
    assert await store.find_delivery("unknown") is None
