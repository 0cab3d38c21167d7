"""Store contract for digests (sql_digests.py), on SQLite in memory, SQLite file and PostgreSQL.

A held item is ``scheduled`` with reason ``digest``: nothing but the digest step moves it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from herald.adapters.store.sql import SqlStore
from herald.domain.models import (
    Delivery,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Priority,
    Recipient,
)
from herald.ports import DigestGroup, DigestPlan
from herald.services.digest import digest_ids
from tests.contract.conftest import NOW, SqlBackend, seed

S = DeliveryStatus
T = NOW + 3600  # the digest time
HELD: dict[str, Any] = {"status": S.SCHEDULED, "reason": "digest", "due_at": T}


def plan_for(items: list[Delivery], at: float = T) -> DigestPlan:
    first = items[0]
    nid, did = digest_ids(first.user_id, first.category, first.channel, at)
    d = Delivery(
        id=did,
        notification_id=nid,
        user_id=first.user_id,
        channel=first.channel,
        status=S.QUEUED,
        priority=Priority.LOW,
        category=first.category,
        address=first.address,
        content={"subject": f"{len(items)} new", "text": "..."},
        due_at=at,
    )
    n = Notification(
        id=nid,
        status=NotificationStatus.ROUTED,
        recipients=[Recipient(user_id=first.user_id)],
        template=None,
        template_version=None,
        content=None,
        data={"digest": {"count": len(items)}},
        channels=[first.channel],
        category=first.category,
        priority=Priority.LOW,
        recipients_total=1,
        recipients_routed=1,
        created_at=at,
    )
    pointer = {"notification_id": nid, "delivery_id": did}
    return DigestPlan(
        notification=n, delivery=d, item_contents={i.id: {**i.content, "digest": pointer} for i in items}
    )


async def statuses(store: SqlStore, items: list[Delivery]) -> list[tuple[str, str | None]]:
    out = []
    for i in items:
        d = await store.get_delivery(i.id)
        assert d is not None
        out.append((d.status.value, d.reason))
    return out


async def test_promote_scheduled_never_queues_a_held_item(store: SqlStore) -> None:
    held, quiet = await seed(
        store,
        {"user_id": "u1", **HELD},
        {"user_id": "u2", "status": S.SCHEDULED, "due_at": T},  # quiet hours: an ordinary schedule
    )
    assert await store.next_due(now=NOW) == T  # the scheduler wakes at the digest time
    assert (await store.promote_scheduled(now=T + 1)).channels == ["email"]
    assert await statuses(store, [held, quiet]) == [("scheduled", "digest"), ("queued", None)]


async def test_due_groups_and_items(store: SqlStore) -> None:
    items = await seed(
        store,
        {"user_id": "u1", **HELD, "due_at": T - 60},
        {"user_id": "u1", **HELD, "channel": "sms", "address": "+15550001"},
        {"user_id": "u2", **HELD, "due_at": T + 86_400},  # tomorrow's digest
        {"user_id": "u3", **HELD, "expires_at": T - 1},  # expired before its digest
        {"user_id": "u4", "status": S.SCHEDULED, "due_at": T},  # not held
    )
    groups = await store.due_digest_groups(now=T, limit=100)
    assert groups == [
        DigestGroup("u1", "transactional", "email"),
        DigestGroup("u1", "transactional", "sms"),
    ]
    assert await store.due_digest_groups(now=T, limit=1) == groups[:1]
    got = await store.held_digest_items("u1", "transactional", "email", now=T)
    assert [d.id for d in got] == [items[0].id]
    assert got[0].content == items[0].content
    assert await store.held_digest_items("u2", "transactional", "email", now=T) == []


async def test_save_digest_writes_all_or_nothing_once(store: SqlStore) -> None:
    a, b = await seed(store, {"user_id": "u1", **HELD}, {"user_id": "u1", **HELD, "channel": "push"})
    b_email = (await seed(store, {"user_id": "u1", **HELD}))[0]
    plan = plan_for([a, b_email])
    assert await store.save_digest(plan, now=T) == "saved"
    digest = await store.get_delivery(plan.delivery.id)
    assert digest is not None and digest.status == S.QUEUED and digest.notification_id == plan.notification.id
    note = await store.get_notification(plan.notification.id)
    assert note is not None and note.status == NotificationStatus.ROUTED
    assert await statuses(store, [a, b_email, b]) == [
        ("skipped", "digested"),
        ("skipped", "digested"),
        ("scheduled", "digest"),  # another channel's item: not in this digest
    ]
    stored = await store.get_delivery(a.id)
    assert stored is not None
    assert stored.content == {**a.content, "digest": {"notification_id": note.id, "delivery_id": digest.id}}
    # Run again (a crashed scheduler's replay): the items are no longer held, nothing is written.
    assert await store.save_digest(plan, now=T + 5) == "changed"
    assert len(await store.get_deliveries(plan.notification.id)) == 1


async def test_save_digest_refuses_a_cancelled_item_and_a_used_digest_time(store: SqlStore) -> None:
    a, b = await seed(store, {"user_id": "u1", **HELD}, {"user_id": "u2", **HELD})
    c = (await seed(store, {"user_id": "u1", **HELD}))[0]
    # c is cancelled between the digest's read and its write: nothing is written.
    assert (await store.cancel_notification(c.notification_id, now=T))[0] == 1
    assert await store.save_digest(plan_for([a, c]), now=T) == "changed"
    assert await store.get_notification(plan_for([a]).notification.id) is None
    assert await statuses(store, [a]) == [("scheduled", "digest")]
    # Without it the digest goes; a late item for the same digest time is refused, not sent twice.
    assert await store.save_digest(plan_for([a]), now=T) == "saved"
    late = (await seed(store, {"user_id": "u1", **HELD}))[0]
    assert await store.save_digest(plan_for([late]), now=T + 60) == "exists"
    assert await statuses(store, [late, b]) == [("scheduled", "digest"), ("scheduled", "digest")]


async def test_rehold_moves_or_releases_held_items(store: SqlStore) -> None:
    a, b, sent = await seed(
        store, {"user_id": "u1", **HELD}, {"user_id": "u2", **HELD}, {"user_id": "u3", **HELD}
    )
    assert await store.save_digest(plan_for([sent]), now=T) == "saved"
    assert await store.rehold_digest_items([a.id, sent.id], due_at=T + 86_400, now=T) == 1
    assert await store.rehold_digest_items([b.id], due_at=None, now=T) == 1
    moved, released = await store.get_delivery(a.id), await store.get_delivery(b.id)
    assert moved is not None and (moved.status, moved.reason, moved.due_at) == (
        S.SCHEDULED,
        "digest",
        T + 86_400,
    )
    assert released is not None and (released.status, released.reason) == (S.SCHEDULED, None)
    assert (await store.promote_scheduled(now=T + 1)).channels == ["email"]  # released: sent on its own
    assert await statuses(store, [a, b]) == [("scheduled", "digest"), ("queued", None)]


async def test_two_processes_saving_the_same_digest_write_it_once(backend: SqlBackend) -> None:
    items = await seed(backend.store, {"user_id": "u1", **HELD}, {"user_id": "u1", **HELD, "channel": "sms"})
    email = [i for i in items if i.channel == "email"]
    others = [await backend.connect() for _ in range(3)]
    results = await asyncio.gather(*(s.save_digest(plan_for(email), now=T) for s in [backend.store, *others]))
    assert sorted(results) == ["changed", "changed", "changed", "saved"]
    assert len(await backend.store.get_deliveries(plan_for(email).notification.id)) == 1


async def test_a_queued_digest_gets_an_outbox_row_for_broker_queues() -> None:
    from sqlalchemy import select

    from herald.adapters.store import schema as t
    from herald.adapters.store.database import Database

    store = SqlStore(Database("sqlite:///:memory:"), outbox=True)
    await store.start()
    try:
        (item,) = await seed(store, {"user_id": "u1", **HELD})
        plan = plan_for([item])
        assert await store.save_digest(plan, now=T) == "saved"
        rows = await store.db.run(
            lambda c: c.execute(select(t.outbox.c.delivery_id, t.outbox.c.channel)).all()
        )
        assert [tuple(r) for r in rows] == [(plan.delivery.id, "email")]
    finally:
        await store.close()
