"""Store methods for operators, on every SQL backend: API keys listed, revoked and marked used;
users written in bulk with their devices, preferences and subscriptions, and a checkpoint."""

from __future__ import annotations

from herald.adapters.store.sql import SqlStore
from herald.domain.models import ApiKey, Device, Preferences, Topic, User, new_id
from herald.ports import UserImport
from tests.contract.conftest import NOW


async def test_keys_listed_revoked_and_marked_used(store: SqlStore) -> None:
    a = ApiKey(id=new_id("key"), name="ops", scopes=frozenset({"admin"}), created_at=NOW)
    b = ApiKey(id=new_id("key"), name="ci", scopes=frozenset({"send", "read"}), created_at=NOW + 1)
    await store.create_api_key(a, "a" * 64)
    await store.create_api_key(b, "b" * 64)
    await store.touch_api_key(b.id, NOW + 50)
    listed = await store.list_api_keys()
    assert [(k.id, k.name, k.scopes, k.last_used_at) for k in listed] == [
        (a.id, "ops", frozenset({"admin"}), None),
        (b.id, "ci", frozenset({"send", "read"}), NOW + 50),
    ]
    revoked = await store.revoke_api_keys([b.id, "key_unknown"], now=NOW + 60)
    assert [(k.id, k.revoked_at) for k in revoked] == [(b.id, NOW + 60)]
    assert await store.get_api_key("b" * 64) is None
    assert [k.id for k in await store.list_api_keys()] == [a.id]
    assert [k.id for k in await store.list_api_keys(include_revoked=True)] == [a.id, b.id]
    assert await store.revoke_api_keys([b.id], now=NOW + 70) == []  # already revoked


def _item(uid: str, **kw: object) -> UserImport:
    return UserImport(user=User(id=uid, email=f"{uid}@example.com", updated_at=NOW), **kw)  # type: ignore[arg-type]


async def test_import_users_upserts_everything_in_one_go(store: SqlStore) -> None:
    await store.put_topic(Topic(key="news", name="News", created_at=NOW, updated_at=NOW))
    assert await store.existing_topics(["news", "nope"]) == {"news"}
    await store.put_user(User(id="u1", phone="+33612345678", created_at=NOW - 100, updated_at=NOW - 100))
    device = Device(id=new_id("dev"), user_id="u1", kind="fcm", token="t1", created_at=NOW)
    prefs = Preferences(user_id="u1", channels={"sms": False}, categories={"marketing": {"email": False}})
    items = [
        _item("u1", devices=[device], preferences=prefs, topics=["news"]),
        _item("u2"),
    ]
    await store.import_users(items, now=NOW, checkpoint=("import:x", '{"offset": 10}'))
    users = await store.get_users(["u1", "u2"])
    assert users["u1"].email == "u1@example.com" and users["u1"].phone is None  # replaced, as PUT
    assert users["u1"].created_at == NOW - 100  # kept
    assert users["u2"].created_at == NOW
    assert [(d.kind, d.token) for d in await store.list_devices(["u1"])] == [("fcm", "t1")]
    got = await store.get_preferences("u1")
    assert (
        got is not None
        and got.channels == {"sms": False}
        and got.categories == {"marketing": {"email": False}}
    )
    assert await store.subscriber_page("news", after=None, limit=10) == ["u1"]
    assert await store.get_setting("import:x") == '{"offset": 10}'

    # Again, with a new device id for the same token and new preferences: idempotent, replaced.
    again = Device(id=new_id("dev"), user_id="u1", kind="fcm", token="t1", created_at=NOW + 5)
    prefs2 = Preferences(user_id="u1", channels={"email": False})
    await store.import_users(
        [_item("u1", devices=[again], preferences=prefs2, topics=["news"])],
        now=NOW + 5,
        checkpoint=("import:x", '{"offset": 20}'),
    )
    assert [d.id for d in await store.list_devices(["u1"])] == [device.id]
    got = await store.get_preferences("u1")
    assert got is not None and got.channels == {"email": False} and got.categories == {}
    assert await store.subscriber_page("news", after=None, limit=10) == ["u1"]
    assert await store.get_setting("import:x") == '{"offset": 20}'
