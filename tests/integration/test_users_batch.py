"""``POST /v1/users/batch``: up to 1,000 users, the fields of ``PUT /v1/users/{id}`` plus devices,
preferences and topics, per-item results, one transaction per batch. Embedded and scaled out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from herald.domain.errors import ServiceUnavailable
from tests.support.herald import make_settings, running_herald
from tests.support.stack import Stack

FULL = {
    "email": "Ana@Example.com",
    "phone": "+33612345678",
    "locale": "fr",
    "timezone": "Europe/Paris",
    "data": {"name": "Ana", "plan": "pro"},
    "webhook_url": "https://hooks.example.com/ana",
    "chat": {"slack": "slack://T000/B000/XXX"},
}


def without_times(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("created_at", "updated_at", "devices")}


async def test_a_batch_writes_what_passes_and_reports_each_item(tmp_path: Path, stack: Stack) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        assert (await h.client.put("/v1/topics/news", json={"name": "News"})).status_code == 200
        assert (await h.client.put("/v1/users/ref", json=FULL)).status_code == 200
        users: list[Any] = [
            {
                "id": "b1",
                **FULL,
                "devices": [{"kind": "fcm", "token": "tok-1"}, {"kind": "apns", "token": "a" * 64}],
                "preferences": {
                    "channels": {"sms": False},
                    "categories": {"marketing": {"email": False}},
                    "quiet_hours": {"start": "22:00", "end": "07:00"},
                    "digests": {"marketing": "daily@09:00"},
                },
                "topics": ["news"],
            },
            {"id": "b2", "email": "not-an-email"},
            {"email": "no-id@example.com"},
            "not an object",
            {"id": "b3", "topics": ["no-such-topic"]},
            {"id": "b4", "preferences": {"categories": {"nope": {"email": False}}}},
            {"id": "b5", "colour": "blue"},
            {"id": "b1", "email": "again@example.com"},
            {"id": "b6"},
        ]
        r = await h.client.post("/v1/users/batch", json={"users": users})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["imported"] == 2 and body["failed"] == 7
        results = body["results"]
        assert [x["index"] for x in results] == list(range(len(users)))
        assert [x["status"] for x in results] == ["ok"] + ["error"] * 7 + ["ok"]
        assert results[1]["error"]["field"] == "email"
        assert results[2]["error"]["field"] == "id"
        assert results[3]["id"] is None and "object" in results[3]["error"]["detail"]
        assert results[4]["error"]["field"] == "topics[0]"
        assert "no-such-topic" in results[4]["error"]["detail"]
        assert results[5]["error"]["field"] == "preferences.categories.nope"
        assert results[6]["error"]["field"] == "colour"
        assert results[7]["error"]["field"] == "id" and "earlier" in results[7]["error"]["detail"]

        # The same profile as PUT /v1/users/{id} with the same fields.
        ref = (await h.client.get("/v1/users/ref")).json()
        b1 = (await h.client.get("/v1/users/b1")).json()
        assert without_times(b1) == {**without_times(ref), "id": "b1"}
        devices = await h.container.store.list_devices(["b1"])
        assert sorted((d.kind, d.token) for d in devices) == [("apns", "a" * 64), ("fcm", "tok-1")]
        prefs = (await h.client.get("/v1/users/b1/preferences")).json()
        assert prefs["channels"]["sms"]["enabled"] is False
        assert prefs["categories"]["marketing"]["email"] == {"enabled": False, "source": "user"}
        assert prefs["quiet_hours"]["value"] == {"start": "22:00", "end": "07:00"}
        assert prefs["digests"]["marketing"]["value"] == "daily@09:00"
        subscribers = await h.container.store.subscriber_page("news", after=None, limit=10)
        assert subscribers == ["b1"]
        for missing in ("b2", "b3", "b4", "b5"):
            assert (await h.client.get(f"/v1/users/{missing}")).status_code == 404

        # Writing the same object again changes nothing: devices matched on kind and token,
        # subscriptions a set, preferences replaced (what makes a file import resumable).
        again = await h.client.post("/v1/users/batch", json={"users": [users[0]]})
        assert again.json()["imported"] == 1
        b1_again = (await h.client.get("/v1/users/b1")).json()
        assert sorted(d["id"] for d in b1_again["devices"]) == sorted(d["id"] for d in b1["devices"])
        assert b1_again["created_at"] == b1["created_at"]
        assert await h.container.store.subscriber_page("news", after=None, limit=10) == ["b1"]

        # Replacing: a later batch without preferences keeps them; with new ones, replaces them.
        replaced = {"id": "b1", "email": "b1@example.com", "preferences": {"channels": {"email": False}}}
        assert (await h.client.post("/v1/users/batch", json={"users": [replaced]})).json()["imported"] == 1
        prefs = (await h.client.get("/v1/users/b1/preferences")).json()
        assert prefs["channels"]["sms"]["source"] == "default"
        assert prefs["channels"]["email"]["enabled"] is False
        assert (await h.client.get("/v1/users/b1")).json()["phone"] is None  # PUT semantics


async def test_batch_limits_and_scope(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        too_many = [{"id": f"u{i}"} for i in range(1001)]
        r = await h.client.post("/v1/users/batch", json={"users": too_many})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == "users"
        r = await h.client.post("/v1/users/batch", json={"users": []})
        assert r.status_code == 422
        r = await h.client.post("/v1/users/batch", json={"people": []})
        assert r.status_code == 422
        reader = await h.new_key("read")
        r = await h.client.post(
            "/v1/users/batch", json={"users": [{"id": "x"}]}, headers={"Authorization": f"Bearer {reader}"}
        )
        assert r.status_code == 403
        r = await h.client.post("/v1/users/batch", json={"users": [{"id": f"u{i}"} for i in range(1000)]})
        assert r.status_code == 200 and r.json()["imported"] == 1000


async def test_one_transaction_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose transaction fails leaves nothing of itself behind."""
    async with running_herald(make_settings(tmp_path)) as h:
        store = h.container.store
        real = store.import_users
        calls: list[int] = []

        async def failing(items: Any, **kw: Any) -> None:
            calls.append(len(items))

            # Write the first half in the same way, then fail before the commit.
            def op(c: Any) -> None:
                from herald.adapters.store import schema as t

                c.execute(
                    t.users.insert(),
                    [{"id": "half", "data": "{}", "chat": "{}", "created_at": 0, "updated_at": 0}],
                )
                raise ServiceUnavailable("database unavailable: simulated")

            await store.db.run(op)  # type: ignore[attr-defined]

        monkeypatch.setattr(store, "import_users", failing)
        r = await h.client.post("/v1/users/batch", json={"users": [{"id": "t1"}, {"id": "t2"}]})
        assert r.status_code == 503
        assert calls == [2]
        monkeypatch.setattr(store, "import_users", real)
        for uid in ("t1", "t2", "half"):
            assert (await h.client.get(f"/v1/users/{uid}")).status_code == 404
