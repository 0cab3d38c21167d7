"""Each hot operation of the store run twice on the same rows, through the reference written in
SQLAlchemy Core (:mod:`herald.adapters.store.hot`) and through the database's fast path
(:mod:`sqlite_hot` on SQLite, :mod:`pg_batch` on PostgreSQL): both must return the same and
leave the same rows. Each run is a transaction rolled back, so both start from one state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, select

from herald.adapters.store import hot, pg_batch, sqlite_hot
from herald.adapters.store import schema as t
from herald.adapters.store.rows import _delivery_rows, attempt_rows
from herald.adapters.store.sql import SqlStore
from herald.domain.models import Device, Preferences, User, new_id
from tests.contract.conftest import NOW, S, make_delivery, make_notification, result, seed

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

Op = Callable[[Any, Connection], Any]  # (the module of hot functions, the connection) -> result


class _Rollback(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _table(c: Connection, table: Any, *, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    rows = [{k: v for k, v in r._mapping.items() if k not in skip} for r in c.execute(select(table))]
    return sorted(rows, key=repr)


def _state(c: Connection) -> dict[str, Any]:
    return {
        "notifications": _table(c, t.notifications),
        "deliveries": _table(c, t.deliveries),
        "attempts": _table(c, t.attempts, skip=("id",)),  # a sequence does not roll back
        "rollups": _table(c, t.delivery_rollups),
    }


async def _both(store: SqlStore, op: Op) -> tuple[Any, Any]:
    """``op`` through the reference and through the fast path, each in a transaction rolled
    back: (what it returned, the rows it left) for each."""
    fast = pg_batch if store.db.dialect == "postgresql" else sqlite_hot

    async def run(impl: Any) -> Any:
        def tx(c: Connection) -> None:
            out = op(impl, c)
            raise _Rollback((out, _state(c)))

        with pytest.raises(_Rollback) as caught:
            await store.db.run(tx)
        return caught.value.value

    return await run(hot), await run(fast)


def _plain(rows: Any) -> list[dict[str, Any]]:
    return sorted((dict(r._asdict()) for r in rows), key=repr)


async def test_insert_deliveries(store: SqlStore) -> None:
    n = make_notification(user_ids=("u1", "u2", "u3"))
    await store.create_notifications([n])
    (existing,) = await seed(store, {"user_id": "u9"})
    fresh = [make_delivery(n.id, user_id=u) for u in ("u1", "u2")]
    held = make_delivery(n.id, user_id="u3", status=S.SCHEDULED, due_at=NOW + 60)
    rows = _delivery_rows([*fresh, held, existing], NOW)  # the last exists: skipped

    for returning in (True, False):

        def op(impl: Any, c: Connection, returning: bool = returning) -> Any:
            return impl.insert_deliveries(c, rows, returning=returning)

        (got, state), (fast_got, fast_state) = await _both(store, op)
        assert _plain(got) == _plain(fast_got)
        assert state == fast_state
        assert {r["id"] for r in _plain(got)} == ({d.id for d in [*fresh, held]} if returning else set())


async def test_routing_held_and_finished(store: SqlStore) -> None:
    mine = [make_notification() for _ in range(3)]
    theirs = make_notification()
    await store.create_notifications([*mine, theirs])
    await store.claim_unrouted(owner="r1", limit=3, lease=60, now=NOW)
    ids = [n.id for n in mine]
    claimed_by_r1 = set(
        await store.db.run(
            lambda c: c.execute(select(t.notifications.c.id).where(t.notifications.c.lease_owner == "r1"))
            .scalars()
            .all()
        )
    )
    await store.claim_unrouted(owner="r2", limit=10, lease=60, now=NOW)
    every = [*ids, theirs.id, "ntf_missing"]

    (held, state), (fast_held, fast_state) = await _both(
        store, lambda impl, c: impl.routing_held(c, every, "r1")
    )
    assert held == fast_held == claimed_by_r1 and state == fast_state

    (_, state), (_, fast_state) = await _both(
        store, lambda impl, c: impl.routing_finished(c, ids[:2], NOW + 5)
    )
    assert state == fast_state
    routed = [r for r in state["notifications"] if r["status"] == "routed"]
    assert {r["id"] for r in routed} == set(ids[:2])


async def test_recipient_rows(store: SqlStore) -> None:
    await store.put_user(User(id="a", email="a@example.com", phone="+33600000001", updated_at=NOW))
    await store.put_user(User(id="b", webhook_url="https://example.com/hook", updated_at=NOW))
    await store.put_user(User(id="c", email="c@example.com", updated_at=NOW))
    await store.put_preferences(
        Preferences(user_id="a", channels={"sms": False}, categories={"news": {"email": False}})
    )
    await store.put_preferences(Preferences(user_id="b", quiet_hours={"start": "22:00", "end": "07:00"}))
    for i, user in enumerate(("a", "a", "b")):
        await store.add_device(
            Device(id=new_id("dev"), user_id=user, kind="fcm", token=f"t{i}", created_at=NOW + i)
        )
    await store.suppress_address("push", "t2", "unregistered", now=NOW)  # b's only device: inactive
    await store.suppress_address("email", "a@example.com", "bounced", now=NOW)
    await store.suppress_address("sms", "+33600000001", "stop", now=NOW)
    await store.suppress_address("webhook", "https://example.com/hook", "gone", now=NOW)
    await store.suppress_address("email", "stranger@example.com", "bounced", now=NOW)
    ids = ["a", "b", "c", "missing"]

    for with_devices in (True, False):

        def op(impl: Any, c: Connection, with_devices: bool = with_devices) -> Any:
            return impl.recipient_rows(c, ids, with_devices=with_devices)

        (got, _), (fast_got, _) = await _both(store, op)
        users, prefs, settings, devices, suppressed = got
        f_users, f_prefs, f_settings, f_devices, f_suppressed = fast_got
        assert _plain(users) == _plain(f_users) and len(users) == 3
        keys = hot.PREFERENCE_COLUMNS
        assert sorted(tuple(getattr(r, k) for k in keys) for r in prefs) == sorted(
            tuple(getattr(r, k) for k in keys) for r in f_prefs
        )
        keys = hot.SETTING_COLUMNS
        assert sorted(tuple(getattr(r, k) for k in keys) for r in settings) == sorted(
            tuple(getattr(r, k) for k in keys) for r in f_settings
        )
        assert [r.id for r in devices] == [r.id for r in f_devices]  # oldest first, active only
        assert len(devices) == (2 if with_devices else 0)
        assert suppressed == f_suppressed == {
            "email": {"a@example.com"},
            "sms": {"+33600000001"},
            "webhook": {"https://example.com/hook"},
        }


async def test_apply_results_and_attempts(store: SqlStore) -> None:
    from herald.adapters.queue.sql import SqlQueue

    ds = await seed(store, *({"user_id": f"u{i}"} for i in range(5)))
    queue = SqlQueue(store.db)
    await queue.start()
    try:
        claimed = await queue.claim("email", owner="w1", limit=4, max_rank=3, lease=30, now=NOW)
    finally:
        await queue.close()
    assert len(claimed) == 4
    by_id = {d.id: d for d in ds}
    sent, retry, dead, stolen = (by_id[d.id] for d in claimed)
    not_claimed = next(d for d in ds if d.id not in {c.id for c in claimed})
    results = [
        result(sent, "w1", S.SENT, provider_message_id="pm-1"),
        result(retry, "w1", S.RETRYING, due_at=NOW + 30),
        result(dead, "w1", S.DEAD, reason="permanent_error"),
        result(stolen, "w2", S.SENT),  # another sender's lease: refused
        result(not_claimed, "w1", S.SENT),  # not being sent: refused
    ]
    batch = {r.delivery_id: r for r in results}

    def op(impl: Any, c: Connection) -> Any:
        changed = impl.apply_results(c, batch, NOW + 1)
        impl.insert_attempts(c, attempt_rows([batch[i] for i in sorted(changed)]))
        return changed

    (changed, state), (fast_changed, fast_state) = await _both(store, op)
    assert changed == fast_changed
    assert set(changed) == {sent.id, retry.id, dead.id}
    assert changed[retry.id].due_at == NOW + 30
    assert state == fast_state
    statuses = {r["id"]: r["status"] for r in state["deliveries"]}
    assert (statuses[sent.id], statuses[stolen.id], statuses[not_claimed.id]) == ("sent", "sending", "queued")
    assert len(state["attempts"]) == 3


async def test_expire(store: SqlStore) -> None:
    ds = await seed(
        store,
        {"user_id": "u1", "expires_at": NOW + 10},  # queued, expired
        {"user_id": "u2", "expires_at": NOW + 100},  # queued, not yet
        {"user_id": "u3", "status": S.SCHEDULED, "due_at": NOW + 50, "expires_at": NOW + 5},
        {"user_id": "u4"},  # never expires
    )
    (ids, state), (fast_ids, fast_state) = await _both(store, lambda impl, c: impl.expire(c, NOW + 20))
    assert sorted(ids) == sorted(fast_ids) == sorted([ds[0].id, ds[2].id])
    assert state == fast_state
    expired = [r for r in state["deliveries"] if r["id"] in ids]
    assert {(r["status"], r["reason"]) for r in expired} == {("skipped", "expired")}


async def test_bump_rollups(store: SqlStore) -> None:
    key = (3600, 1_799_996_400, "-", "transactional", "email", "smtp")
    await store.db.run(lambda c: hot.bump_rollups(c, [(*key, "sent", 5)]))  # there before
    rows = [
        (*key, "sent", 2),
        (*key, "delivered", 1),
        (86_400, 1_799_971_200, "t1", "news", "sms", "-", "failed", 3),
    ]
    (_, state), (_, fast_state) = await _both(store, lambda impl, c: impl.bump_rollups(c, rows))
    assert state == fast_state
    counts = {(r["metric"], r["size"]): r["count"] for r in state["rollups"]}
    assert counts == {("sent", 3600): 7, ("delivered", 3600): 1, ("failed", 86_400): 3}
