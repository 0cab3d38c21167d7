"""Issue: herald end to end on one machine (SQLite, SMTP, in-app)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import WELCOME
from tests.support.herald import make_settings, running_herald
from tests.support.smtp import SmtpTestServer

pytestmark = pytest.mark.usefixtures("stack")  # embedded and scale-out (tests/support/stack.py)


async def _setup_users(client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/templates/welcome", json=WELCOME)
    assert r.status_code == 200, r.text
    for uid, email, locale, name in (
        ("ana", "ana@example.com", "fr", "Ana"),
        ("eva", "eva@example.com", "es", "Eva"),
        ("bob", "bob@example.com", "en", "Bob"),
    ):
        r = await client.put(
            f"/v1/users/{uid}", json={"email": email, "locale": locale, "data": {"name": name}}
        )
        assert r.status_code == 200, r.text


async def test_email_reaches_real_smtp_server_as_mime_in_the_users_locale(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        ids = {}
        for uid in ("ana", "eva"):
            r = await h.client.post(
                "/v1/notifications",
                json={"to": uid, "template": "welcome", "data": {"code": "1234"}, "channels": ["email"]},
            )
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "accepted"
            ids[uid] = r.json()["id"]
        bodies = {uid: await h.wait_final(nid) for uid, nid in ids.items()}

    received = {r.rcpt_tos[0]: r.message for r in smtp_server.handler.received}
    assert set(received) == {"ana@example.com", "eva@example.com"}
    fr = received["ana@example.com"]
    assert fr["Subject"] == "Bienvenue, Ana"  # the fr variant
    assert received["eva@example.com"]["Subject"] == "Welcome, Eva"  # es has none: the default
    assert fr["From"] == "noreply@herald.test"
    assert fr["Message-ID"].startswith("<") and fr["Message-ID"].endswith("@herald.test>")
    assert fr.get_content_type() == "multipart/alternative"
    text = fr.get_body(("plain",))
    html = fr.get_body(("html",))
    assert text is not None and text.get_content().strip() == "Your code is 1234"
    assert html is not None and "<b>1234</b>" in html.get_content()
    # transactional may not be opted out of: no List-Unsubscribe
    assert fr["List-Unsubscribe"] is None

    d = bodies["ana"]["deliveries"][0]
    assert d["status"] == "sent" and d["provider"] == "smtp" and d["channel"] == "email"
    (attempt,) = d["attempts"]
    assert attempt["outcome"] == "ok" and attempt["provider"] == "smtp" and attempt["code"] == "250"
    assert attempt["latency_ms"] is not None and attempt["latency_ms"] >= 0
    assert d["sent_at"] is not None


async def test_in_app_inbox_unread_count_read_and_isolation(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        r = await h.client.post(
            "/v1/notifications",
            json={
                "to": "ana",
                "template": "welcome",
                "data": {"code": "77"},
                "channels": ["email", "in_app"],
            },
        )
        assert r.status_code == 202
        body = await h.wait_final(r.json()["id"])
        assert {d["channel"]: d["status"] for d in body["deliveries"]} == {"email": "sent", "in_app": "sent"}
        assert len(smtp_server.handler.received) == 1

        # The end user reads their own inbox with a short-lived token.
        tok = (await h.client.post("/v1/users/ana/token")).json()["token"]
        user = httpx.AsyncClient(base_url=h.base_url, headers={"Authorization": f"Bearer {tok}"})
        async with user:
            inbox = (await user.get("/v1/users/ana/inbox")).json()
            assert inbox["unread_count"] == 1
            (item,) = inbox["items"]
            assert item["title"] == "Welcome" and item["body"] == "Code 77" and item["read"] is False
            r = await user.post(f"/v1/users/ana/inbox/{item['id']}/read")
            assert r.status_code == 200 and r.json()["unread_count"] == 0
            assert (await user.get("/v1/users/ana/inbox")).json()["unread_count"] == 0

            # Ana's token cannot reach Bob's inbox or mark Bob's items.
            r = await user.get("/v1/users/bob/inbox")
            assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
            assert (await user.get("/v1/notifications")).status_code == 403

        # Bob's token cannot read Ana's inbox; a tampered token is refused.
        bob_tok = (await h.client.post("/v1/users/bob/token")).json()["token"]
        async with httpx.AsyncClient(base_url=h.base_url) as anon:
            r = await anon.get("/v1/users/ana/inbox", headers={"Authorization": f"Bearer {bob_tok}"})
            assert r.status_code == 403
            r = await anon.post(
                f"/v1/users/ana/inbox/{item['id']}/read", headers={"Authorization": f"Bearer {bob_tok}"}
            )
            assert r.status_code == 403
            r = await anon.get("/v1/users/ana/inbox", headers={"Authorization": f"Bearer {tok[:-2]}xx"})
            assert r.status_code == 401
            # A read-scope API key reads, but cannot mark read.
            read_key = await h.new_key("read")
            r = await anon.get("/v1/users/ana/inbox", headers={"Authorization": f"Bearer {read_key}"})
            assert r.status_code == 200
            r = await anon.post(
                "/v1/users/ana/inbox/read-all", headers={"Authorization": f"Bearer {read_key}"}
            )
            assert r.status_code == 403


async def test_marketing_opt_out_skips_but_security_still_arrives(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        r = await h.client.put(
            "/v1/users/bob/preferences", json={"categories": {"marketing": {"email": False}}}
        )
        assert r.status_code == 200, r.text
        prefs = (await h.client.get("/v1/users/bob/preferences")).json()
        assert prefs["categories"]["marketing"]["email"] == {"enabled": False, "source": "user"}
        assert prefs["categories"]["security"]["email"]["enabled"] is True

        content = {"subject": "Hi", "text": "news"}
        m = await h.client.post(
            "/v1/notifications",
            json={"to": "bob", "content": content, "channels": ["email"], "category": "marketing"},
        )
        s = await h.client.post(
            "/v1/notifications",
            json={
                "to": "bob",
                "content": {"subject": "Login", "text": "new login"},
                "channels": ["email"],
                "category": "security",
            },
        )
        assert m.status_code == 202 and s.status_code == 202
        mb = await h.wait_final(m.json()["id"])
        sb = await h.wait_final(s.json()["id"])
        # The state machine refuses an impossible tracking event instead of overwriting.
        skipped_id = mb["deliveries"][0]["id"]
        r = await h.client.post(f"/v1/deliveries/{skipped_id}/events", json={"event": "delivered"})
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        sent_id = sb["deliveries"][0]["id"]
        r = await h.client.post(f"/v1/deliveries/{sent_id}/events", json={"event": "delivered"})
        assert r.status_code == 200 and r.json()["status"] == "delivered"
        r = await h.client.post(f"/v1/deliveries/{sent_id}/events", json={"event": "opened"})
        assert r.json()["status"] == "read"
    assert mb["deliveries"][0]["status"] == "skipped" and mb["deliveries"][0]["reason"] == "opted_out"
    assert mb["deliveries"][0]["attempts"] == []
    assert sb["deliveries"][0]["status"] == "sent"
    subjects = [r.message["Subject"] for r in smtp_server.handler.received]
    assert subjects == ["Login"]


async def test_opt_outable_email_carries_one_click_unsubscribe(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        r = await h.client.post(
            "/v1/notifications",
            json={
                "to": "bob",
                "content": {"subject": "Deals", "text": "x"},
                "channels": ["email"],
                "category": "marketing",
            },
        )
        await h.wait_final(r.json()["id"])
        (msg,) = [x.message for x in smtp_server.handler.received]
        url = msg["List-Unsubscribe"].strip("<>")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        path = url[url.index("/v1/unsubscribe/") :]
        async with httpx.AsyncClient(base_url=h.base_url) as anon:
            assert (await anon.post(path)).status_code == 200
            assert (await anon.post(path[:-3] + "abc")).status_code == 422
        prefs = (await h.client.get("/v1/users/bob/preferences")).json()
        assert prefs["categories"]["marketing"]["email"]["enabled"] is False


HOSTILE_TEMPLATES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for i in range(100000000) %}x{% endfor %}",
    "{% for a in range(5000) %}{% for b in range(5000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 100000000 }}",
    "{{ cycler.__init__.__globals__.os }}",
]


async def test_bad_input_gets_problem_json_and_changes_nothing(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port, server={"max_body_bytes": 4096})
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        c = h.client

        async def count() -> int:
            return len((await c.get("/v1/notifications", params={"limit": 200})).json()["items"])

        before = await count()
        cases = [
            (
                "malformed JSON",
                c.post(
                    "/v1/notifications",
                    content=b'{"to": "ana", ',
                    headers={"content-type": "application/json"},
                ),
                400,
            ),
            ("unknown template", c.post("/v1/notifications", json={"to": "ana", "template": "nope"}), 422),
            ("unknown user", c.post("/v1/notifications", json={"to": "ghost", "template": "welcome"}), 422),
            (
                "invalid inline email",
                c.post(
                    "/v1/notifications",
                    json={
                        "to": [{"id": "x", "email": "not-an-email"}],
                        "template": "welcome",
                        "channels": ["email"],
                    },
                ),
                422,
            ),
            (
                "invalid inline phone",
                c.post(
                    "/v1/notifications",
                    json={"to": [{"id": "x", "phone": "0612"}], "template": "welcome", "channels": ["sms"]},
                ),
                422,
            ),
            (
                "unknown category",
                c.post("/v1/notifications", json={"to": "ana", "template": "welcome", "category": "nope"}),
                422,
            ),
            (
                "unknown channel",
                c.post("/v1/notifications", json={"to": "ana", "template": "welcome", "channels": ["fax"]}),
                422,
            ),
            (
                "oversized body",
                c.post(
                    "/v1/notifications",
                    json={"to": "ana", "template": "welcome", "data": {"x": "y" * 10_000}},
                ),
                413,
            ),
        ]
        for name, call, status in cases:
            r = await call
            assert r.status_code == status, (name, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json", name
            body = r.json()
            assert body["status"] == status and body["detail"] and "Traceback" not in r.text, name
        assert (await c.put("/v1/users/zed", json={"email": "bad@"})).status_code == 422
        assert (await c.put("/v1/users/zed", json={"phone": "+1555"})).status_code == 422
        assert (await c.get("/v1/users/zed")).status_code == 404

        async with httpx.AsyncClient(base_url=h.base_url) as anon:
            r = await anon.post("/v1/notifications", json={"to": "ana", "template": "welcome"})
            assert r.status_code == 401 and r.json()["title"] == "Unauthorized"
            r = await anon.post(
                "/v1/notifications",
                json={"to": "ana", "template": "welcome"},
                headers={"Authorization": "Bearer hk_wrong"},
            )
            assert r.status_code == 401
            read_key = await h.new_key("read")
            r = await anon.post(
                "/v1/notifications",
                json={"to": "ana", "template": "welcome"},
                headers={"Authorization": f"Bearer {read_key}"},
            )
            assert r.status_code == 403
            send_key = await h.new_key("send")
            r = await anon.put(
                "/v1/templates/x", json=WELCOME, headers={"Authorization": f"Bearer {send_key}"}
            )
            assert r.status_code == 403

        for source in HOSTILE_TEMPLATES:
            tpl = {"channels": {"email": {"subject": "s", "text": source}}}
            r = await c.put("/v1/templates/evil", json=tpl)
            if r.status_code == 200:  # compiles: it must be refused at render time, never executed
                r = await c.post("/v1/templates/evil/render", json={"channel": "email"})
            assert r.status_code == 422, (source, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert "<class" not in r.text and "subclasses" not in r.text.replace(source, "")
        # A template hostile only with the data of a send is stored (its trial render at PUT
        # stays within budget); its deliveries fail, it never runs; nothing reaches SMTP.
        hostile_with_data = "{% for i in range(data.n|default(1)) %}x{% endfor %}"
        r = await c.put(
            "/v1/templates/evil", json={"channels": {"email": {"subject": "s", "text": hostile_with_data}}}
        )
        assert r.status_code == 200
        r = await c.post(
            "/v1/notifications", json={"to": "ana", "template": "evil", "data": {"n": 100_000_000}}
        )
        body = await h.wait_final(r.json()["id"])
        assert (
            body["deliveries"][0]["status"] == "failed" and body["deliveries"][0]["reason"] == "render_error"
        )
        assert await count() == before + 1
        assert smtp_server.handler.received == []
        # Still serving.
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ok = await c.post(
            "/v1/notifications",
            json={"to": "ana", "template": "welcome", "data": {"code": "1"}, "channels": ["email"]},
        )
        await h.wait_final(ok.json()["id"])
        assert len(smtp_server.handler.received) == 1


async def test_idempotency_key_returns_original_and_rejects_changed_body(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        body = {"to": "ana", "template": "welcome", "data": {"code": "1"}, "channels": ["in_app"]}
        r1 = await h.client.post("/v1/notifications", json=body, headers={"Idempotency-Key": "order-42"})
        r2 = await h.client.post("/v1/notifications", json=body, headers={"Idempotency-Key": "order-42"})
        assert r1.status_code == r2.status_code == 202 and r1.json() == r2.json()
        r3 = await h.client.post(
            "/v1/notifications", json={**body, "data": {"code": "2"}}, headers={"Idempotency-Key": "order-42"}
        )
        assert r3.status_code == 422 and r3.headers["content-type"] == "application/problem+json"
        items = (await h.client.get("/v1/notifications")).json()["items"]
        assert [i["id"] for i in items] == [r1.json()["id"]]


async def test_metrics_health_and_openapi(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        r = await h.client.post(
            "/v1/notifications", json={"to": "ana", "template": "welcome", "channels": ["in_app", "email"]}
        )
        await h.wait_final(r.json()["id"])
        assert (await h.client.get("/readyz")).json()["status"] == "ready"
        text = (await h.client.get("/metrics")).text
        assert 'herald_deliveries{channel="in_app",provider="in_app",status="sent"} 1.0' in text
        assert "herald_attempt_latency_seconds_bucket" in text
        assert "herald_queue_depth" in text
        spec = (await h.client.get("/openapi.json")).json()
        assert "/v1/notifications" in spec["paths"] and "/v1/users/{user_id}/inbox" in spec["paths"]
        listed = (await h.client.get("/v1/notifications", params={"user_id": "ana", "limit": 1})).json()
        assert listed["items"][0]["id"] == r.json()["id"]
        cancel = await h.client.post(f"/v1/notifications/{r.json()['id']}/cancel")
        answer = cancel.json()
        assert answer["cancelled"] == 0 and "already sent or finished" in answer["detail"], answer


@pytest.mark.parametrize("n", [3])
async def test_batch_partial_success(tmp_path: Path, n: int) -> None:
    settings = make_settings(tmp_path)
    async with running_herald(settings) as h:
        await _setup_users(h.client)
        items = [{"to": "ana", "template": "welcome", "channels": ["in_app"]} for _ in range(n)]
        items.append({"to": "ghost", "template": "welcome"})
        r = await h.client.post("/v1/notifications/batch", json={"notifications": items})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["accepted"] == n and body["rejected"] == 1
        assert body["results"][-1]["code"] == 422 and "ghost" in body["results"][-1]["error"]
        for res in body["results"][:n]:
            await h.wait_final(res["id"])
        await asyncio.sleep(0)
