"""Issue 17 part 6: the API tells the truth.

* the list shows each notification with the status its detail shows, and filters by it;
* an unknown filter value is a 422 that lists the allowed ones;
* ``POST /v1/users/{id}/token {"ttl_seconds": n}`` gives a token valid n seconds, bounded;
* cancelling a notification before it is routed says that routing was stopped.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from herald.testing import FakeClock
from tests.support.herald import Running, make_settings, running_herald
from tests.support.waits import eventually

pytestmark = pytest.mark.usefixtures("stack")

SEND = {"content": {"text": "hi"}, "channels": ["email"]}


async def _send(h: Running, **extra: object) -> str:
    r = await h.client.post("/v1/notifications", json={"to": "u1", **SEND, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def _listed(h: Running, **params: str) -> dict[str, str]:
    r = await h.client.get("/v1/notifications", params=params)
    assert r.status_code == 200, r.text
    return {item["id"]: item["status"] for item in r.json()["items"]}


async def test_the_list_shows_the_details_status_and_filters_by_it(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        done = await _send(h)
        assert (await h.wait_final(done, timeout=30))["status"] == "completed"
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        waiting = await _send(h, send_at=later)  # routed, its delivery scheduled: in progress

        async def routed() -> bool:  # past `routing` too: the list is read after, not during it
            status = (await h.client.get(f"/v1/notifications/{waiting}")).json()["status"]
            return status not in ("accepted", "routing")

        await eventually(routed, timeout=30)

        listed = await _listed(h)
        for nid in (done, waiting):
            detail = (await h.client.get(f"/v1/notifications/{nid}")).json()
            assert listed[nid] == detail["status"], (nid, listed, detail["status"])
        assert listed == {done: "completed", waiting: "in_progress"}

        assert await _listed(h, status="completed") == {done: "completed"}
        assert await _listed(h, status="in_progress") == {waiting: "in_progress"}
        assert await _listed(h, status="accepted") == {}
        assert await _listed(h, delivery_status="sent") == {done: "completed"}
        assert await _listed(h, delivery_status="scheduled") == {waiting: "in_progress"}
        assert await _listed(h, status="in_progress", channel="email", user_id="u1") == {
            waiting: "in_progress"
        }
        assert await _listed(h, status="completed", channel="sms") == {}

        # Cancelling the scheduled one finishes it: completed everywhere, nothing in progress.
        r = await h.client.post(f"/v1/notifications/{waiting}/cancel")
        assert r.status_code == 200 and r.json()["cancelled"] == 1 and r.json()["status"] == "completed"
        assert await _listed(h, status="in_progress") == {}
        assert set(await _listed(h, status="completed")) == {done, waiting}


@pytest.mark.parametrize(
    ("param", "value", "allowed"),
    [
        ("status", "bogus", "'in_progress'"),
        ("status", "sent", "'completed'"),  # a delivery status: delivery_status=sent
        ("delivery_status", "bogus", "'retrying'"),
        ("channel", "carrier_pigeon", "'in_app'"),
    ],
)
async def test_an_unknown_filter_value_is_a_422_listing_the_allowed_ones(
    tmp_path: Path, param: str, value: str, allowed: str
) -> None:
    async with running_herald(make_settings(tmp_path), roles=frozenset()) as h:
        r = await h.client.get("/v1/notifications", params={param: value})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["field"] == param
        assert allowed in problem["detail"], problem


async def test_a_user_token_lives_the_ttl_asked_for_within_bounds(tmp_path: Path) -> None:
    clock = FakeClock(start=time.time())
    async with running_herald(make_settings(tmp_path), clock=clock, roles=frozenset()) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        r = await h.client.post("/v1/users/u1/token", json={"ttl_seconds": 60})
        assert r.status_code == 200, r.text
        token = r.json()
        assert token["ttl_seconds"] == 60
        expires = datetime.fromisoformat(token["expires_at"].replace("Z", "+00:00")).timestamp()
        assert clock.now() + 59 <= expires <= clock.now() + 60

        async with httpx.AsyncClient(
            base_url=h.base_url, headers={"Authorization": f"Bearer {token['token']}"}
        ) as user:
            assert (await user.get("/v1/users/u1/inbox")).status_code == 200
            clock.advance(59)
            assert (await user.get("/v1/users/u1/inbox")).status_code == 200
            clock.advance(2)  # past the 60 s it was given (an hour by default)
            r = await user.get("/v1/users/u1/inbox")
            assert r.status_code == 401 and "expired" in r.json()["detail"]

        default = (await h.client.post("/v1/users/u1/token")).json()
        assert default["ttl_seconds"] == 3600
        for bad in (59, 0, -1, 86_400 * 30 + 1, 10**12, "60", True, 60.5):
            r = await h.client.post("/v1/users/u1/token", json={"ttl_seconds": bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["field"] == "ttl_seconds", r.json()


async def test_cancelling_a_topic_notification_before_routing_says_routing_stopped(tmp_path: Path) -> None:
    # No router in this herald: the notification stays accepted until it is cancelled.
    async with running_herald(make_settings(tmp_path), roles=frozenset()) as h:
        for uid in ("t1", "t2"):
            r = await h.client.put(f"/v1/users/{uid}", json={"email": f"{uid}@example.com"})
            assert r.status_code == 200
        assert (await h.client.put("/v1/topics/news", json={"name": "News"})).status_code == 200
        r = await h.client.post("/v1/topics/news/subscribers", json={"user_ids": ["t1", "t2"]})
        assert r.status_code == 200
        r = await h.client.post("/v1/notifications", json={"to": {"topic": "news"}, **SEND})
        assert r.status_code == 202, r.text
        nid = r.json()["id"]

        r = await h.client.post(f"/v1/notifications/{nid}/cancel")
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["status"] == "cancelled" and answer["routing_stopped"] is True, answer
        assert "routing stopped" in answer["detail"]
        detail = (await h.client.get(f"/v1/notifications/{nid}")).json()
        assert detail["status"] == "cancelled" and detail["deliveries"] == []
        assert await _listed(h, status="cancelled") == {nid: "cancelled"}

        again = (await h.client.post(f"/v1/notifications/{nid}/cancel")).json()
        assert again["routing_stopped"] is False and again["status"] == "cancelled"
        assert "already cancelled" in again["detail"]
        assert (await h.client.post("/v1/notifications/ntf_nope/cancel")).status_code == 404
