"""Issue 19: the browser-ready inbox stream (``?token=``, event ids, resume, bounds, shutdown)
and CORS for the end-user endpoints. Runs on the embedded and the scale-out stack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.herald import Running, make_settings, running_herald

pytestmark = pytest.mark.usefixtures("stack")

ORIGIN = "https://app.example"


class Sse:
    """A minimal SSE reader over an httpx stream."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self, kind: str | None = None, timeout: float = 20) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            event: dict[str, Any] = {}
            async for line in self.lines:
                if line == "":
                    if "event" in event and (kind is None or event["event"] == kind):
                        return event
                    event = {}
                    continue
                name, _, value = line.partition(":")
                if name:
                    event[name] = orjson.loads(value) if name == "data" else value.strip()
            raise AssertionError("the stream ended")

        return await asyncio.wait_for(read(), timeout)


@contextlib.asynccontextmanager
async def open_stream(h: Running, user: str, **kwargs: Any) -> AsyncIterator[Sse]:
    async with (
        httpx.AsyncClient(base_url=h.base_url, timeout=30) as anon,
        anon.stream("GET", f"/v1/users/{user}/inbox/stream", **kwargs) as r,
    ):
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        yield Sse(r)


async def _send(h: Running, user: str, title: str) -> str:
    r = await h.client.post(
        "/v1/notifications",
        json={"to": user, "content": {"title": title, "body": "b", "url": "/x"}, "channels": ["in_app"]},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def _token(h: Running, user: str) -> str:
    assert (await h.client.put(f"/v1/users/{user}", json={})).status_code == 200
    return str((await h.client.post(f"/v1/users/{user}/token")).json()["token"])


async def test_stream_with_token_in_the_query_ids_and_resume(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        tok = await _token(h, "ana")
        async with open_stream(h, "ana", params={"token": tok}) as s:
            first = await s.next("unread")
            assert first["data"] == {"unread_count": 0} and first["id"] == "0"
            await _send(h, "ana", "one")
            one = await s.next("item")
            assert one["data"]["title"] == "one" and one["data"]["url"] == "/x" and one["id"] == "1"
            assert one["data"]["read"] is False
        # While nobody listens: two more items. A reconnect with Last-Event-ID gets both, in order.
        await _send(h, "ana", "two")
        await _send(h, "ana", "three")
        headers = {"Last-Event-ID": "1"}
        async with open_stream(h, "ana", params={"token": tok}, headers=headers) as s:
            assert (await s.next("unread"))["id"] == "1"
            got = [await s.next("item"), await s.next("item")]
            assert [(e["id"], e["data"]["title"]) for e in got] == [("2", "two"), ("3", "three")]
        # The listing says where the stream starts; ?last_event_id= resumes from there.
        listing = (await h.client.get("/v1/users/ana/inbox")).json()
        assert listing["last_event_id"] == "3"
        await _send(h, "ana", "four")
        async with open_stream(h, "ana", params={"token": tok, "last_event_id": "3"}) as s:
            item = await s.next("item")
            assert item["id"] == "4" and item["data"]["title"] == "four"
            # Reading it elsewhere updates the count on the stream.
            user = {"Authorization": f"Bearer {tok}"}
            async with httpx.AsyncClient(base_url=h.base_url, headers=user) as c:
                assert (await c.post("/v1/users/ana/inbox/read-all")).status_code == 200
            while (await s.next("unread"))["data"]["unread_count"] != 0:
                pass


async def test_stream_refuses_bad_credentials_and_bad_ids(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        tok = await _token(h, "ana")
        bob = await _token(h, "bob")
        async with httpx.AsyncClient(base_url=h.base_url, timeout=10) as anon:
            url = "/v1/users/ana/inbox/stream"
            assert (await anon.get(url)).status_code == 401
            r = await anon.get(url, params={"token": h.key})  # an API key never goes in a URL
            assert r.status_code == 401 and "user token" in r.json()["detail"]
            assert h.key not in r.text
            assert (await anon.get(url, params={"token": tok[:-2] + "xx"})).status_code == 401
            assert (await anon.get(url, params={"token": bob})).status_code == 403
            # ?token= is for the stream only
            assert (await anon.get("/v1/users/ana/inbox", params={"token": tok})).status_code == 401
            r = await anon.get(url, params={"token": tok, "last_event_id": "x1"})
            assert r.status_code == 422 and r.json()["field"] == "last_event_id"
            r = await anon.get(url, params={"token": tok}, headers={"Last-Event-ID": "-4"})
            assert r.status_code == 422 and r.json()["field"] == "Last-Event-ID"


async def test_streams_per_user_are_bounded_and_shutdown_ends_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, server={"streams_per_user": 2, "stream_heartbeat_seconds": 0.5})
    async with running_herald(settings) as h:
        tok = await _token(h, "ana")
        async with (
            open_stream(h, "ana", params={"token": tok}) as s1,
            open_stream(h, "ana", params={"token": tok}) as s2,
        ):
            await s1.next("unread")
            await s2.next("unread")
            async with httpx.AsyncClient(base_url=h.base_url) as anon:
                r = await anon.get("/v1/users/ana/inbox/stream", params={"token": tok})
                assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
            h.container.hub.close_streams()  # what SIGTERM does
            for s in (s1, s2):
                with pytest.raises(AssertionError, match="ended"):
                    await s.next()
        assert h.container.hub.open_streams == 0
        async with httpx.AsyncClient(base_url=h.base_url) as anon:
            r = await anon.get("/v1/users/ana/inbox/stream", params={"token": tok})
            assert r.status_code == 503  # clients reconnect to another process


async def test_cors_for_user_endpoints_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, server={"cors_origins": [ORIGIN]})
    async with running_herald(settings) as h:
        tok = await _token(h, "ana")
        async with httpx.AsyncClient(base_url=h.base_url, timeout=10) as anon:
            pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
            for path in ("/v1/users/ana/inbox/stream", "/v1/users/ana/inbox", "/v1/users/ana/preferences"):
                r = await anon.options(
                    path, headers={**pre, "Access-Control-Request-Headers": "authorization"}
                )
                assert r.status_code == 204, path
                assert r.headers["access-control-allow-origin"] == ORIGIN
                assert "authorization" in r.headers["access-control-allow-headers"]
            post = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
            r = await anon.options("/v1/users/ana/inbox/read-all", headers=post)
            assert r.status_code == 204
            # Another origin, or an API-key endpoint: no CORS.
            r = await anon.options("/v1/users/ana/inbox", headers={**pre, "Origin": "https://evil.example"})
            assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
            r = await anon.options("/v1/notifications", headers=post)
            assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
            # The real requests: a user token gets the header, an API key never does.
            user = {"Origin": ORIGIN, "Authorization": f"Bearer {tok}"}
            r = await anon.get("/v1/users/ana/inbox", headers=user)
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
            key = {"Origin": ORIGIN, "Authorization": f"Bearer {h.key}"}
            r = await anon.get("/v1/users/ana/inbox", headers=key)
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
            r = await anon.get("/v1/notifications", headers=key)
            assert "access-control-allow-origin" not in r.headers
