"""Issue 4: topics — subscribe, send to a topic, progress, resume at the cursor, 422s."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from herald.domain.models import Delivery
from herald.testing import RecordingProvider
from tests.support.herald import Running, make_settings, running_herald
from tests.support.waits import eventually


async def users(h: Running, n: int, prefix: str = "t") -> list[str]:
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    for uid in ids:
        r = await h.client.put(f"/v1/users/{uid}", json={"email": f"{uid}@example.com"})
        assert r.status_code == 200, r.text
    return ids


async def test_send_to_a_topic_reaches_each_subscriber_once(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    settings = make_settings(tmp_path, channels={"email": {"providers": ["rec"]}})
    async with running_herald(settings, providers={"rec": rec}) as h:
        ids = await users(h, 40)
        r = await h.client.put("/v1/topics/releases", json={"name": "Release notes"})
        assert r.status_code == 200 and r.json()["subscribers"] == 0
        r = await h.client.post("/v1/topics/releases/subscribers", json={"user_ids": ids + ids[:5]})
        assert r.status_code == 200, r.text
        assert r.json()["added"] == 40 and r.json()["subscribers"] == 40
        r = await h.client.delete("/v1/topics/releases/subscribers/t000")
        assert r.json()["removed"] == 1 and r.json()["subscribers"] == 39

        r = await h.client.post(
            "/v1/notifications",
            json={
                "to": {"topic": "releases"},
                "content": {"subject": "v2", "text": "out"},
                "channels": ["email"],
            },
        )
        assert r.status_code == 202, r.text
        nid = r.json()["id"]

        async def all_sent() -> bool:
            return len(rec.sent) >= 39

        await eventually(all_sent)
        body = (await h.client.get(f"/v1/notifications/{nid}")).json()
        assert body["topic"] == "releases"
        assert body["recipients_total"] == 39 and body["recipients_routed"] == 39
        got = sorted(m.user_id for m in rec.sent)
        assert got == ids[1:]  # everyone subscribed, once; the unsubscribed user not at all

        # The deliveries come a page at a time, with the count of all of them per status.
        seen: list[str] = []
        after: str | None = None
        while True:
            params = {"deliveries_limit": 10} | ({"deliveries_after": after} if after else {})
            page = (await h.client.get(f"/v1/notifications/{nid}", params=params)).json()
            assert page["summary"] == {"sent": 39} and page["status"] == "completed"
            assert len(page["deliveries"]) <= 10
            seen += [d["id"] for d in page["deliveries"]]
            after = page["deliveries_next"]
            if after is None:
                break
        assert len(seen) == 39 and seen == sorted(set(seen))
        assert body["deliveries_next"] is None and len(body["deliveries"]) == 39  # default: up to 1,000
        r = await h.client.get(f"/v1/notifications/{nid}", params={"deliveries_limit": 0})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")

        # Deleting a user removes the subscription.
        assert (await h.client.delete("/v1/users/t001")).status_code in (200, 204)
        assert (await h.client.get("/v1/topics/releases")).json()["subscribers"] == 38


async def test_topic_errors_are_clear(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        await users(h, 2)
        r = await h.client.post(
            "/v1/notifications",
            json={"to": {"topic": "nope"}, "content": {"subject": "a", "text": "b"}, "channels": ["email"]},
        )
        assert r.status_code == 422 and r.json()["field"] == "to.topic"
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await h.client.post(
            "/v1/notifications",
            json={
                "to": {"topic": "x", "also": 1},
                "content": {"subject": "a", "text": "b"},
                "channels": ["email"],
            },
        )
        assert r.status_code == 422 and r.json()["field"] == "to"
        assert (
            await h.client.post("/v1/topics/nope/subscribers", json={"user_ids": ["t000"]})
        ).status_code == 404
        assert (await h.client.put("/v1/topics/news", json={})).status_code == 200
        r = await h.client.post("/v1/topics/news/subscribers", json={"user_ids": ["t000", "ghost"]})
        assert r.status_code == 422 and "ghost" in r.json()["detail"]
        assert (await h.client.get("/v1/topics/news")).json()["subscribers"] == 0  # nothing stored
        r = await h.client.post("/v1/topics/news/subscribers", json={"user_ids": []})
        assert r.status_code == 422
        assert (await h.client.put("/v1/topics/bad key!", json={})).status_code == 422


async def test_fan_out_resumes_at_the_cursor_after_losing_the_router(tmp_path: Path) -> None:
    """A router that dies between chunks: the next one continues at the cursor, nobody twice."""
    settings = make_settings(tmp_path, channels={"email": {"providers": ["console"]}})
    async with running_herald(settings, roles=frozenset()) as h:  # no background router
        ids = await users(h, 1200, prefix="s")
        await h.client.put("/v1/topics/big", json={})
        for i in range(0, 1200, 500):
            await h.client.post("/v1/topics/big/subscribers", json={"user_ids": ids[i : i + 500]})
        r = await h.client.post(
            "/v1/notifications",
            json={"to": {"topic": "big"}, "content": {"subject": "a", "text": "b"}, "channels": ["email"]},
        )
        nid = r.json()["id"]
        store, router = h.container.store, h.container.router
        saved = store.save_routed_many
        calls = 0

        async def crash_after_first_chunk(batches, **kw):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("router died")
            return await saved(batches, **kw)

        store.save_routed_many = crash_after_first_chunk  # type: ignore[method-assign]
        with contextlib.suppress(RuntimeError):
            await router.route_pending()
        store.save_routed_many = saved  # type: ignore[method-assign]
        n = await store.get_notification(nid)
        assert n is not None and n.recipients_routed == 500 and n.route_cursor == sorted(ids)[499]
        assert n.recipients_total == 1200
        # The lease (5 s, real clock) expires; another router takes over from the cursor.
        other = type(router)(
            store, router.clock, router.catalog, lambda _c, _top: None, router.unsubscribe, lease=5
        )

        async def taken_over() -> bool:
            await other.route_pending()
            m = await store.get_notification(nid)
            return m is not None and m.status.value == "routed"

        await eventually(taken_over, timeout=15)
        deliveries: list[Delivery] = await store.get_deliveries(nid, with_attempts=False)
        assert len(deliveries) == 1200
        assert sorted(d.user_id for d in deliveries) == sorted(ids)


async def test_an_event_to_a_topic_fans_out_through_its_rule(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    settings = make_settings(tmp_path, channels={"email": {"providers": ["rec"]}})
    async with running_herald(settings, providers={"rec": rec}) as h:
        ids = await users(h, 12, prefix="e")
        await h.client.put("/v1/topics/outages", json={"name": "Status page"})
        await h.client.post("/v1/topics/outages/subscribers", json={"user_ids": ids})
        template = {
            "category": "system",
            "channels": {"email": {"subject": "{{ data.what }} is down", "text": "."}},
        }
        assert (await h.client.put("/v1/templates/outage", json=template)).status_code == 200
        rule = {"template": "outage", "channels": ["email"], "priority": "critical"}
        assert (await h.client.put("/v1/rules/outage", json=rule)).status_code == 200
        r = await h.client.post(
            "/v1/events", json={"type": "outage", "to": {"topic": "outages"}, "data": {"what": "API"}}
        )
        assert r.status_code == 202 and r.json()["status"] == "accepted", r.text

        async def all_sent() -> bool:
            return len(rec.sent) >= 12

        await eventually(all_sent)
        assert sorted(m.user_id for m in rec.sent) == ids
        assert all(m.content["subject"] == "API is down" and m.priority.value == "critical" for m in rec.sent)


async def test_a_critical_send_is_routed_during_a_long_topic_fan_out(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    settings = make_settings(tmp_path, channels={"email": {"providers": ["rec"]}})
    async with running_herald(settings, providers={"rec": rec}) as h:
        ids = await users(h, 3000, prefix="f")
        await h.client.put("/v1/topics/weekly", json={})
        for i in range(0, 3000, 1000):
            await h.client.post("/v1/topics/weekly/subscribers", json={"user_ids": ids[i : i + 1000]})
        store = h.container.store
        saved = store.save_routed_many

        async def slow_page(batches, **kw):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.3)  # each page of the fan-out takes a while
            return await saved(batches, **kw)

        store.save_routed_many = slow_page  # type: ignore[method-assign]
        r = await h.client.post(
            "/v1/notifications",
            json={"to": {"topic": "weekly"}, "content": {"subject": "w", "text": "w"}, "channels": ["email"]},
        )
        fan_out = r.json()["id"]

        async def started() -> bool:
            n = await store.get_notification(fan_out)
            return n is not None and n.recipients_routed > 0

        await eventually(started)
        r = await h.client.post(
            "/v1/notifications",
            json={
                "to": ids[1],
                "content": {"subject": "alert", "text": "!"},
                "channels": ["email"],
                "priority": "critical",
            },
        )
        critical = r.json()["id"]

        async def critical_sent() -> bool:
            return any(m.notification_id == critical for m in rec.sent)

        await eventually(critical_sent)
        n = await store.get_notification(fan_out)
        assert n is not None and n.recipients_routed < 3000, "the critical send waited for the whole fan-out"
        store.save_routed_many = saved  # type: ignore[method-assign]
