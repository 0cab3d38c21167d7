"""The Store port's contract, on every adapter (memory, sqlite, postgres).

Each test is one behaviour of a port method as its docstring states it; a difference between
engines shows up here as a failing case.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore
from herald.domain.errors import IdempotencyKeyTaken, IllegalTransition, NotFound, ServiceUnavailable
from herald.domain.models import (
    ApiKey,
    Device,
    NotificationStatus,
    Outcome,
    Preferences,
    Priority,
    Recipient,
    Template,
    User,
    new_id,
)
from herald.ports import DeadLetterFilter, IdempotencyClaim, NotificationFilter, RoutedBatch
from tests.contract.conftest import (
    NOW,
    S,
    SqlBackend,
    make_delivery,
    make_notification,
    pg_execute,
    pg_url_for,
    result,
    seed,
    settle,
)

# Lifecycle ---------------------------------------------------------------------------------------


async def test_ping_and_start_twice(store: SqlStore) -> None:
    await store.ping()
    await store.start()  # the schema is current: a second upgrade changes nothing
    await store.ping()


async def test_unreachable_postgres_is_service_unavailable() -> None:
    store = SqlStore(Database("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"))
    try:
        with pytest.raises(ServiceUnavailable):
            await store.start()
        with pytest.raises(ServiceUnavailable):
            await store.ping()
        with pytest.raises(ServiceUnavailable):
            await store.get_user("u1")
    finally:
        await store.close()


async def test_connection_lost_mid_transaction_is_service_unavailable_then_recovers(
    backend: SqlBackend,
) -> None:
    if backend.name != "postgres":
        pytest.skip("a server connection to lose exists on PostgreSQL only")
    from sqlalchemy import text

    with pytest.raises(ServiceUnavailable):
        await backend.store.db.run(lambda c: c.execute(text("SELECT pg_terminate_backend(pg_backend_pid())")))
    # Every pooled connection killed from outside, as a server restart does:
    await asyncio.gather(*(backend.store.ping() for _ in range(4)))
    killed = pg_execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{backend.schema}'"
    )
    assert killed
    # The pool notices the dead connections and reconnects on its own.
    await backend.store.ping()
    assert await backend.store.get_user("nobody") is None


async def test_a_transaction_on_a_connection_cut_while_idle_is_run_again_once(backend: SqlBackend) -> None:
    """No pre-ping: a pooled connection the server cut while it was idle is found dead by the
    transaction's first statement; the transaction runs again on a fresh connection and its
    writes are applied once."""
    if backend.name != "postgres":
        pytest.skip("a server connection to lose exists on PostgreSQL only")
    store = backend.store
    await asyncio.gather(*(store.ping() for _ in range(4)))  # connections idle in the pool
    assert pg_execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{backend.schema}'"
    )
    await store.put_user(_user())  # no ServiceUnavailable: run again on a new connection
    got = await store.get_user("u1")
    assert got is not None and got.email == _user().email
    assert pg_execute(f'SELECT count(*) FROM "{backend.schema}".users') == [(1,)]


# API keys and settings ---------------------------------------------------------------------------


async def test_api_keys(store: SqlStore) -> None:
    key = ApiKey(id=new_id("key"), name="ci", scopes=frozenset({"send", "read"}), created_at=NOW)
    await store.create_api_key(key, "h" * 64)
    got = await store.get_api_key("h" * 64)
    assert got is not None
    assert (got.id, got.name, got.scopes, got.created_at) == (key.id, "ci", frozenset({"send", "read"}), NOW)
    assert await store.get_api_key("x" * 64) is None


async def test_put_setting_if_absent_keeps_the_first_value(store: SqlStore) -> None:
    assert await store.get_setting("secret") is None
    assert await store.put_setting_if_absent("secret", "one") == "one"
    assert await store.put_setting_if_absent("secret", "two") == "one"
    assert await store.get_setting("secret") == "one"


async def test_put_setting_if_absent_agrees_under_concurrency(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    got = await asyncio.gather(*(stores[i % 2].put_setting_if_absent("s", f"v{i}") for i in range(12)))
    assert len(set(got)) == 1


# Users, devices, preferences -------------------------------------------------------------------------


def _user(uid: str = "u1", at: float = NOW, **kw: object) -> User:
    return User(
        id=uid,
        email=f"{uid}@example.com",
        phone="+33612345678",
        locale="fr",
        timezone="Europe/Paris",
        data={"name": "Ana", "n": 1},
        chat={"slack": "U1"},
        updated_at=at,
        **kw,  # type: ignore[arg-type]
    )


async def test_put_and_get_user(store: SqlStore) -> None:
    await store.put_user(_user(webhook_url="https://example.com/hook"))
    got = await store.get_user("u1")
    assert got is not None
    assert (got.email, got.phone, got.locale, got.timezone) == (
        "u1@example.com",
        "+33612345678",
        "fr",
        "Europe/Paris",
    )
    assert got.data == {"name": "Ana", "n": 1}
    assert got.chat == {"slack": "U1"}
    assert got.webhook_url == "https://example.com/hook"
    assert (got.created_at, got.updated_at) == (NOW, NOW)
    assert await store.get_user("nobody") is None


async def test_put_user_again_updates_and_keeps_created_at(store: SqlStore) -> None:
    await store.put_user(_user())
    later = User(id="u1", email="new@example.com", updated_at=NOW + 10)
    returned = await store.put_user(later)
    assert returned.created_at == NOW
    got = await store.get_user("u1")
    assert got is not None
    assert got.email == "new@example.com"
    assert got.phone is None  # a PUT replaces the profile
    assert (got.created_at, got.updated_at) == (NOW, NOW + 10)


async def test_put_user_concurrently_for_a_new_id(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    await asyncio.gather(
        *(stores[i % 2].put_user(_user("same", at=NOW + i)) for i in range(10)),
    )
    got = await backend.store.get_user("same")
    assert got is not None
    assert got.created_at is not None


async def test_get_users_many(store: SqlStore) -> None:
    for uid in ("a", "b", "c"):
        await store.put_user(_user(uid))
    got = await store.get_users(["a", "c", "zz", "a"])
    assert set(got) == {"a", "c"}
    assert got["c"].email == "c@example.com"
    assert await store.get_users([]) == {}


async def test_devices(store: SqlStore) -> None:
    d1 = Device(id=new_id("dev"), user_id="u1", kind="fcm", token="tok-1", data={"app": "x"}, created_at=NOW)
    d2 = Device(id=new_id("dev"), user_id="u1", kind="apns", token="tok-2", created_at=NOW + 1)
    await store.add_device(d1)
    await store.add_device(d2)
    # the same token again is the same device, not a second one
    again = await store.add_device(
        Device(
            id=new_id("dev"), user_id="u1", kind="fcm", token="tok-1", data={"app": "y"}, created_at=NOW + 2
        )
    )
    assert again.id == d1.id
    listed = await store.list_devices(["u1", "u2"])
    assert [d.id for d in listed] == [d1.id, d2.id]
    assert listed[0].data == {"app": "y"}
    assert await store.remove_device("u2", d1.id) is False  # not their device
    assert await store.remove_device("u1", d1.id) is True
    assert await store.remove_device("u1", d1.id) is False
    assert [d.id for d in await store.list_devices(["u1"])] == [d2.id]


async def test_dead_push_token_is_deactivated_and_readding_reactivates(
    store: SqlStore, queue: SqlQueue
) -> None:
    dev = Device(id=new_id("dev"), user_id="u1", kind="fcm", token="dead-token", created_at=NOW)
    await store.add_device(dev)
    (d,) = await seed(store, {"user_id": "u1", "channel": "push", "address": "dead-token"})
    await settle(
        store,
        queue,
        (d, S.FAILED),
        reason="invalid_token",
        dead_address="dead-token",
        outcome=Outcome.DEAD_ADDRESS,
    )
    assert await store.list_devices(["u1"]) == []
    inactive = await store.list_devices(["u1"], active_only=False)
    assert [x.active for x in inactive] == [False]
    await store.add_device(Device(id=new_id("dev"), user_id="u1", kind="fcm", token="dead-token"))
    assert [x.id for x in await store.list_devices(["u1"])] == [dev.id]


async def test_preferences_round_trip_and_replace(store: SqlStore) -> None:
    assert await store.get_preferences("u1") is None
    prefs = Preferences(
        user_id="u1",
        channels={"sms": False, "email": True},
        categories={"marketing": {"email": False, "push": True}},
        quiet_hours={"start": "22:00", "end": "07:00"},
        digests={"marketing": "daily"},
    )
    await store.put_preferences(prefs)
    got = await store.get_preferences("u1")
    assert got == prefs
    await store.put_preferences(Preferences(user_id="u1", channels={"push": False}))
    got = await store.get_preferences("u1")
    assert got == Preferences(user_id="u1", channels={"push": False})
    many = await store.get_preferences_many(["u1", "u2"])
    assert set(many) == {"u1"}


async def test_put_preferences_concurrently(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    variants = [
        Preferences(user_id="u1", channels={"sms": i % 2 == 0}, categories={"m": {"email": True}})
        for i in range(10)
    ]
    await asyncio.gather(*(stores[i % 2].put_preferences(p) for i, p in enumerate(variants)))
    got = await backend.store.get_preferences("u1")
    assert got in variants  # one whole write won; never a mix or a duplicate-key error


async def test_delete_user_erases_personal_data_and_keeps_the_log(store: SqlStore, queue: SqlQueue) -> None:
    await store.put_user(_user())
    await store.add_device(Device(id=new_id("dev"), user_id="u1", kind="fcm", token="t"))
    await store.put_preferences(Preferences(user_id="u1", channels={"sms": False}))
    (d,) = await seed(store, {"user_id": "u1", "address": "u1@example.com"})
    assert await store.delete_user("u1") is True
    assert await store.get_user("u1") is None
    assert await store.list_devices(["u1"], active_only=False) == []
    assert await store.get_preferences("u1") is None
    kept = await store.get_delivery(d.id)
    assert kept is not None
    assert kept.address is None and kept.content == {}
    assert await store.delete_user("u1") is False


# Templates ---------------------------------------------------------------------------------------


def _template(name: str = "welcome", subject: str = "Hi") -> Template:
    return Template(
        name=name,
        version=0,
        category="transactional",
        channels={"email": {"subject": subject, "text": "t"}},
        locales={"fr": {"email": {"subject": "Salut"}}},
        default_locale="en",
        created_at=NOW,
    )


async def test_templates_are_versioned(store: SqlStore) -> None:
    assert (await store.put_template(_template(subject="v1"))).version == 1
    assert (await store.put_template(_template(subject="v2"))).version == 2
    latest = await store.get_template("welcome")
    assert latest is not None
    assert latest.version == 2 and latest.channels["email"]["subject"] == "v2"
    assert latest.locales == {"fr": {"email": {"subject": "Salut"}}}
    first = await store.get_template("welcome", 1)
    assert first is not None and first.channels["email"]["subject"] == "v1"
    assert await store.get_template("welcome", 9) is None
    assert await store.get_template("other") is None


async def test_deleted_template_stops_resolving_by_name_but_keeps_versions(store: SqlStore) -> None:
    await store.put_template(_template())
    assert await store.delete_template("welcome") is True
    assert await store.delete_template("welcome") is False
    assert await store.delete_template("never") is False
    assert await store.get_template("welcome") is None
    assert await store.get_template("welcome", 1) is not None  # notifications still routing need it
    again = await store.put_template(_template(subject="back"))
    assert again.version == 2
    got = await store.get_template("welcome")
    assert got is not None and got.version == 2


async def test_put_template_concurrently_gives_distinct_versions(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    done = await asyncio.gather(*(stores[i % 2].put_template(_template(subject=f"s{i}")) for i in range(8)))
    assert sorted(t.version for t in done) == list(range(1, 9))
    latest = await backend.store.get_template("welcome")
    assert latest is not None and latest.version == 8


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


async def test_suppressions(store: SqlStore) -> None:
    await store.suppress_address("email", "a@example.com", "bounced", now=NOW)
    await store.suppress_address("email", "a@example.com", "spam", now=NOW + 1)  # idempotent
    await store.suppress_address("sms", "+33612345678", "unsubscribed", now=NOW)
    assert await store.suppressed("email", ["a@example.com", "b@example.com", "a@example.com"]) == {
        "a@example.com"
    }
    assert await store.suppressed("sms", ["+33612345678"]) == {"+33612345678"}
    assert await store.suppressed("email", []) == set()


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


_START = """
import asyncio, sys, time
from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore

async def main() -> None:
    store = SqlStore(Database(sys.argv[1]))
    await asyncio.sleep(float(sys.argv[3]) - time.time())  # all start at the same instant
    await store.start()
    await store.put_setting_if_absent("started", sys.argv[2])
    await store.close()

asyncio.run(main())
"""


async def test_many_processes_starting_at_once_migrate_once(backend: SqlBackend, tmp_path: Path) -> None:
    """Every herald process runs the migration at start; on a fresh database they race."""
    if backend.name == "memory":
        pytest.skip("an in-memory database belongs to one process")
    schema = None
    if backend.name == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        schema = f"herald_test_{uuid.uuid4().hex[:16]}"
        pg_execute(f'CREATE SCHEMA "{schema}"')
        url = pg_url_for(schema)
    try:
        at = str(time.time() + 2.0)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", _START, url, str(i), at, stderr=asyncio.subprocess.PIPE
            )
            for i in range(4)
        ]
        for p in procs:
            _, err = await asyncio.wait_for(p.communicate(), 60)
            assert p.returncode == 0, err.decode()[-2000:]
        # and threads of one process starting stores at once
        stores = [SqlStore(Database(url)) for _ in range(3)]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.start() for s in stores)), 60)
            assert await stores[2].get_setting("started") in {"0", "1", "2", "3"}
        finally:
            for s in stores:
                await s.close()
    finally:
        if schema is not None:
            pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_deadlocked_transaction_is_run_again(backend: SqlBackend) -> None:
    if backend.name != "postgres":
        pytest.skip("SQLite has one writer: no deadlocks")
    import threading

    from sqlalchemy import Connection, text

    store = backend.store
    await store.put_setting_if_absent("a", "0")
    await store.put_setting_if_absent("b", "0")
    barrier = threading.Barrier(2, timeout=10)
    runs = {"ab": 0, "ba": 0}

    def locker(first: str, second: str) -> Callable[[Connection], str]:
        def op(c: Connection) -> str:
            runs[first + second] += 1
            c.execute(
                text("UPDATE settings SET value = value || :v WHERE name = :n"), {"v": first, "n": first}
            )
            if runs[first + second] == 1:
                barrier.wait()  # both hold their first row: each now waits for the other's
            c.execute(
                text("UPDATE settings SET value = value || :v WHERE name = :n"), {"v": first, "n": second}
            )
            return first

        return op

    # deadlock_timeout (1 s by default) passes, PostgreSQL aborts one; it runs again and both finish.
    done = await asyncio.wait_for(
        asyncio.gather(store.db.run(locker("a", "b")), store.db.run(locker("b", "a"))), 30
    )
    assert sorted(done) == ["a", "b"]
    assert sorted(runs.values()) == [1, 2]
    assert len(await store.get_setting("a") or "") == len(await store.get_setting("b") or "") == 3


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
    await store.put_user(_user("a"))
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


async def test_find_delivery_by_provider_message_id(store: SqlStore, queue: SqlQueue) -> None:
    (a,) = await seed(store, {})
    await settle(store, queue, (a, S.SENT), provider_message_id="sg-123")
    found = await store.find_delivery("sg-123")
    assert found is not None and found.id == a.id
    assert await store.find_delivery("unknown") is None


async def test_first_seen(store: SqlStore) -> None:
    assert await store.first_seen("twilio:SM1:delivered", ttl=600, now=NOW) is True
    assert await store.first_seen("twilio:SM1:delivered", ttl=600, now=NOW + 1) is False
    assert await store.first_seen("twilio:SM1:read", ttl=600, now=NOW + 1) is True
    assert await store.first_seen("twilio:SM1:delivered", ttl=600, now=NOW + 601) is True  # expired


async def test_first_seen_has_one_winner_under_concurrency(backend: SqlBackend) -> None:
    stores = [backend.store, await backend.connect()]
    got = await asyncio.gather(*(stores[i % 2].first_seen("evt", ttl=60, now=NOW) for i in range(10)))
    assert got.count(True) == 1
