"""The Store port's contract for the directory (API keys, settings, users, devices, preferences,
templates, suppressions), on every adapter (memory, sqlite, postgres).
"""

from __future__ import annotations

import asyncio

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.domain.models import (
    ApiKey,
    Device,
    Outcome,
    Preferences,
    Template,
    User,
    new_id,
)
from tests.contract.conftest import (
    NOW,
    S,
    SqlBackend,
    make_user,
    seed,
    settle,
)

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


async def test_put_and_get_user(store: SqlStore) -> None:
    await store.put_user(make_user(webhook_url="https://example.com/hook"))
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
    await store.put_user(make_user())
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
        *(stores[i % 2].put_user(make_user("same", at=NOW + i)) for i in range(10)),
    )
    got = await backend.store.get_user("same")
    assert got is not None
    assert got.created_at is not None


async def test_get_users_many(store: SqlStore) -> None:
    for uid in ("a", "b", "c"):
        await store.put_user(make_user(uid))
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
    await store.put_user(make_user())
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


async def test_suppressions(store: SqlStore) -> None:
    await store.suppress_address("email", "a@example.com", "bounced", now=NOW)
    await store.suppress_address("email", "a@example.com", "spam", now=NOW + 1)  # idempotent
    await store.suppress_address("sms", "+33612345678", "unsubscribed", now=NOW)
    assert await store.suppressed("email", ["a@example.com", "b@example.com", "a@example.com"]) == {
        "a@example.com"
    }
    assert await store.suppressed("sms", ["+33612345678"]) == {"+33612345678"}
    assert await store.suppressed("email", []) == set()
