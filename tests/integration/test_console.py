"""The operator console over HTTP: sign-in, the session cookie, CSRF, read-only keys refused on
the server, search, detail, dead-letter replay that reaches the provider, template edit."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from herald.domain.errors import TransientDeliveryError
from herald.testing import RecordingProvider
from tests.support.herald import Running, make_settings, running_herald


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


@asynccontextmanager
async def signed_in(h: Running, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=h.base_url, follow_redirects=False, timeout=30) as b:
        r = await b.post("/console/login", data={"key": key, "next": "/console/dead-letters"})
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/console/dead-letters"
        yield b


def settings_with(tmp: Path) -> Any:
    return make_settings(
        tmp, channels={"email": {"providers": ["rec"]}}, retry={"schedule": [0.0, 0.0], "jitter": 0}
    )


async def dead_delivery(h: Running, rec: RecordingProvider, user: str = "ana") -> tuple[str, str]:
    """A notification whose email delivery failed twice (immediate retry) and is dead."""
    rec.script(
        [TransientDeliveryError("mailbox busy", code="451"), TransientDeliveryError("still busy", code="452")]
    )
    await h.client.put(f"/v1/users/{user}", json={"email": f"{user}@example.com"})
    r = await h.client.post(
        "/v1/notifications",
        json={"to": user, "content": {"subject": "s", "text": "t"}, "channels": ["email"]},
    )
    assert r.status_code == 202, r.text
    nid = r.json()["id"]

    async def dead() -> str | None:
        body = (await h.client.get(f"/v1/notifications/{nid}")).json()
        d = body["deliveries"][0] if body.get("deliveries") else None
        return d["id"] if d and d["status"] == "dead" else None

    return nid, await eventually(dead)


async def test_sign_in_sets_a_strict_http_only_expiring_cookie_and_sign_out_ends_it(tmp_path: Path) -> None:
    async with (
        running_herald(make_settings(tmp_path)) as h,
        httpx.AsyncClient(base_url=h.base_url, follow_redirects=False) as b,
    ):
        r = await b.get("/console/notifications?user=x")
        assert r.status_code == 303
        assert r.headers["location"] == "/console/login?next=/console/notifications%3Fuser%3Dx"
        r = await b.get("/console/login")
        assert r.status_code == 200 and 'type="password"' in r.text and 'name="key"' in r.text

        r = await b.post("/console/login", data={"key": "hk_wrong"})
        assert r.status_code == 401 and "unknown or revoked API key" in r.text
        assert "herald_console" not in r.headers.get("set-cookie", "")

        r = await b.post("/console/login", data={"key": h.key, "next": "https://evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/console"  # no open redirect
        cookie = r.headers["set-cookie"]
        assert "herald_console=" in cookie and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower() and "Max-Age=" in cookie and "Path=/console" in cookie
        assert h.key not in cookie  # the key itself never goes into the cookie

        page = await b.get("/console")
        assert page.status_code == 200 and "<svg" in page.text
        assert (
            "Content-Security-Policy" in page.headers
            and "default-src 'self'" in page.headers["content-security-policy"]
        )

        # A tampered cookie is no session.
        value = b.cookies.get("herald_console", path="/console")
        assert value
        tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
        async with httpx.AsyncClient(base_url=h.base_url, follow_redirects=False) as other:
            r = await other.get("/console", headers={"Cookie": f"herald_console={tampered}"})
            assert r.status_code == 303
            r = await other.get("/console", headers={"Cookie": f"herald_console={value}"})
            assert r.status_code == 200

        r = await b.post("/console/logout", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
        assert "herald_console=" in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
        assert not b.cookies.get("herald_console")
        assert (await b.get("/console")).status_code == 303


async def test_a_dead_letter_shows_its_last_error_and_a_replay_reaches_the_provider(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    async with running_herald(settings_with(tmp_path), providers={"rec": rec}) as h:
        nid, did = await dead_delivery(h, rec)
        async with signed_in(h, h.key) as b:
            page = await b.get("/console/dead-letters")
            assert did in page.text, page.text
            assert "452 still busy" in page.text, page.text[page.text.find('dead-letters"') :]
            # The detail page shows both attempts with their codes.
            detail = await b.get(f"/console/notifications/{nid}")
            assert detail.status_code == 200
            assert "451" in detail.text and "452" in detail.text and "mailbox busy" in detail.text

            # Without the CSRF token, or from another site, nothing happens.
            assert (await b.post("/console/dead-letters/replay", data={"one": did})).status_code == 403
            r = await b.post(
                "/console/dead-letters/replay",
                data={"one": did, "csrf": csrf_of(page.text)},
                headers={"Origin": "https://evil.example"},
            )
            assert r.status_code == 403
            assert (await h.container.store.get_delivery(did)).status.value == "dead"  # type: ignore[union-attr]

            r = await b.post("/console/dead-letters/replay", data={"one": did, "csrf": csrf_of(page.text)})
            assert r.status_code == 303 and "replayed=1" in r.headers["location"]

            async def reached() -> bool:
                return any(m.delivery_id == did for m in rec.sent)

            await eventually(reached)
            d = await h.container.store.get_delivery(did)
            assert d is not None and d.status.value == "sent"


async def test_replay_all_matching_names_the_count_and_replays_exactly_those(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    async with running_herald(settings_with(tmp_path), providers={"rec": rec}) as h:
        ids = [(await dead_delivery(h, rec, user=f"u{i}"))[1] for i in range(3)]
        async with signed_in(h, h.key) as b:
            confirm = await b.get("/console/dead-letters/replay-all?channel=email")
            assert "Replay 3 dead letters" in confirm.text
            csrf = csrf_of(confirm.text)
            # A stale count (the matching set changed since) asks again instead of replaying.
            r = await b.post(
                "/console/dead-letters/replay",
                data={"mode": "all", "count": "2", "channel": "email", "csrf": csrf},
            )
            assert r.status_code == 303 and "replay-all" in r.headers["location"]
            r = await b.post(
                "/console/dead-letters/replay",
                data={"mode": "all", "count": "3", "channel": "email", "csrf": csrf},
            )
            assert r.status_code == 303 and "replayed=3" in r.headers["location"]

            async def all_sent() -> bool:
                return {m.delivery_id for m in rec.sent} >= set(ids)

            await eventually(all_sent)


async def test_a_read_key_may_look_but_every_write_is_refused_on_the_server(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    async with running_herald(settings_with(tmp_path), providers={"rec": rec}) as h:
        nid, did = await dead_delivery(h, rec)
        r = await h.client.put(
            "/v1/templates/welcome", json={"channels": {"email": {"subject": "a", "text": "b"}}}
        )
        assert r.status_code == 200
        reader = await h.new_key("read")
        async with signed_in(h, reader) as b:
            page = await b.get("/console/dead-letters")
            assert page.status_code == 200 and did in page.text
            assert "replay-one" not in page.text  # not offered ...
            csrf = csrf_of(page.text)
            # ... and refused when posted anyway, with a valid session and CSRF token.
            for path, data in [
                ("/console/dead-letters/replay", {"one": did}),
                ("/console/dead-letters/replay", {"mode": "all", "count": "1"}),
                ("/console/templates/welcome", {"email.subject": "hacked", "email.text": "x"}),
                (f"/console/notifications/{nid}/cancel", {}),
                ("/console/rules/order", {"body": '{"template": "welcome", "channels": ["email"]}'}),
            ]:
                r = await b.post(path, data={**data, "csrf": csrf})
                assert r.status_code == 403, (path, r.status_code)
                assert "may look but not change anything" in r.text
            assert (await h.container.store.get_delivery(did)).status.value == "dead"  # type: ignore[union-attr]
            t = await h.container.store.get_template("welcome")
            assert t is not None and t.version == 1 and t.channels["email"]["subject"] == "a"
            assert await h.container.store.get_rule("order") is None
            # Looking is allowed: the preview renders nothing stored.
            r = await b.post(
                "/console/templates/welcome/preview",
                data={
                    "email.subject": "Hi {{ data.n }}",
                    "sample_data": '{"n": 7}',
                    "fragment": "1",
                    "csrf": csrf,
                },
            )
            assert r.status_code == 200 and "Hi 7" in r.text


async def test_search_by_user_and_template_and_the_detail_with_attempts(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    settings = make_settings(tmp_path, channels={"email": {"providers": ["rec"]}})
    async with running_herald(settings, providers={"rec": rec}) as h:
        await h.client.put(
            "/v1/templates/welcome", json={"channels": {"email": {"subject": "a", "text": "b"}}}
        )
        await h.client.put("/v1/templates/other", json={"channels": {"email": {"subject": "a", "text": "b"}}})
        for u in ("ana", "bob"):
            await h.client.put(f"/v1/users/{u}", json={"email": f"{u}@example.com"})
        ids = {}
        for u, t in (("ana", "welcome"), ("bob", "welcome"), ("ana", "other")):
            r = await h.client.post("/v1/notifications", json={"to": u, "template": t})
            ids[(u, t)] = r.json()["id"]
        for nid in ids.values():
            await h.wait_final(nid)
        async with signed_in(h, h.key) as b:
            r = await b.get("/console/notifications", params={"user": "ana"})
            assert ids[("ana", "welcome")] in r.text and ids[("ana", "other")] in r.text
            assert ids[("bob", "welcome")] not in r.text
            r = await b.get("/console/notifications", params={"template": "welcome"})
            assert ids[("ana", "welcome")] in r.text and ids[("bob", "welcome")] in r.text
            assert ids[("ana", "other")] not in r.text
            r = await b.get("/console/notifications", params={"status": "dead"})
            assert "No deliveries match" in r.text
            r = await b.get("/console/notifications", params={"status": "nonsense"})
            assert "unknown status" in r.text
            r = await b.get("/console/notifications", params={"since": "yesterday"})
            assert "since: not a date" in r.text
            r = await b.get(f"/console/notifications/{ids[('ana', 'welcome')]}")
            assert r.status_code == 200 and "rec" in r.text and "ok" in r.text  # the attempt
            r = await b.get("/console/notifications/ntf_missing")
            assert r.status_code == 404
            r = await b.get("/console/users/ana")
            assert r.status_code == 200 and "ana@example.com" in r.text and ids[("ana", "other")] in r.text


async def test_template_edit_validates_inline_previews_and_new_sends_use_it(tmp_path: Path) -> None:
    rec = RecordingProvider("rec")
    settings = make_settings(tmp_path, channels={"email": {"providers": ["rec"]}})
    async with running_herald(settings, providers={"rec": rec}) as h:
        await h.client.put(
            "/v1/templates/welcome", json={"channels": {"email": {"subject": "Old", "text": "old"}}}
        )
        await h.client.put("/v1/users/ana", json={"email": "ana@example.com", "data": {"name": "Ana"}})
        async with signed_in(h, h.key) as b:
            page = await b.get("/console/templates/welcome")
            assert 'value="Old"' in page.text
            csrf = csrf_of(page.text)
            bad = {"csrf": csrf, "email.subject": "Hi {{ user.data.name ", "email.text": "x", "locales": "{}"}
            r = await b.post("/console/templates/welcome", data=bad)
            assert r.status_code == 422 and "channels.email" in r.text  # the field, inline
            assert (await h.container.store.get_template("welcome")).version == 1  # type: ignore[union-attr]
            good = {
                "csrf": csrf,
                "email.subject": "New {{ user.data.name }}",
                "email.text": "new text",
                "locales": "{}",
            }
            r = await b.post(
                "/console/templates/welcome/preview", data={**good, "preview_user": "ana", "fragment": "1"}
            )
            assert r.status_code == 200 and "New Ana" in r.text
            r = await b.post("/console/templates/welcome", data=good)
            assert r.status_code == 303 and r.headers["location"].endswith("saved=2")
        r = await h.client.post("/v1/notifications", json={"to": "ana", "template": "welcome"})
        await h.wait_final(r.json()["id"])
        assert rec.sent[-1].content["subject"] == "New Ana" and rec.sent[-1].content["text"] == "new text"


async def test_errors_on_console_pages_are_pages_not_json(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h, signed_in(h, h.key) as b:
        page = await b.get("/console/dead-letters")
        r = await b.post("/console/notifications/ntf_missing/cancel", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "ntf_missing does not exist" in r.text
        r = await b.post("/console/rules/bad%20type", data={"csrf": csrf_of(page.text), "body": "{}"})
        assert r.status_code == 422 and "text/html" in r.headers["content-type"]
