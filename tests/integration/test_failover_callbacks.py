"""Issue: providers — failover with circuit breakers, status callbacks, push dispatch."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
from twilio.request_validator import RequestValidator

from tests.emulators.sendgrid import DEFAULT_API_KEY, SendGridEmulator
from tests.emulators.twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioEmulator
from tests.support.herald import Running, make_settings, running_herald
from tests.support.smtp import SmtpTestServer
from tests.support.waits import eventually

PUBLIC = "https://herald.example.com"


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendGridEmulator]:
    emu = SendGridEmulator(verified_senders={"noreply@herald.example.com"})
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.spec_errors == []


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioEmulator]:
    emu = TwilioEmulator()
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.spec_errors == []


def sg_config(emu: SendGridEmulator, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": DEFAULT_API_KEY,
        "from_email": "noreply@herald.example.com",
        "base_url": emu.url,
        "timeout": 5,
        "event_webhook_public_key": emu.public_key_b64,
        **extra,
    }


async def batch(h: Running, n: int, tag: str) -> list[str]:
    items = [
        {"to": "u1", "content": {"subject": f"{tag}{i}", "text": "x"}, "channels": ["email"]}
        for i in range(n)
    ]
    r = await h.client.post("/v1/notifications/batch", json={"notifications": items})
    assert r.json()["accepted"] == n
    ids = [x["id"] for x in r.json()["results"]]
    for nid in ids:
        await h.wait_final(nid)
    return ids


async def test_failover_opens_the_circuit_and_traffic_returns_after_recovery(
    tmp_path: Path, sendgrid: SendGridEmulator, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(
        tmp_path,
        smtp_port=smtp_server.port,
        providers={
            "sendgrid": sg_config(sendgrid),
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_server.port,
                "from_address": "noreply@herald.example.com",
            },
        },
        channels={
            "email": {
                "providers": ["sendgrid", "smtp"],
                "concurrency": 4,
                "breaker_threshold": 3,
                "breaker_open_seconds": 1.0,
            }
        },
    )
    async with running_herald(settings) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        sendgrid.fail_next("custom", count=10_000, status=503, message="down")
        first = await batch(h, 30, "a")
        tried_while_down = len(sendgrid.requests)
        assert tried_while_down <= 3 + 4  # the threshold, plus sends already in flight when it opened
        # SendGrid recovers; after the open interval the next send is the probe that closes the
        # circuit (sends racing it while half-open go to SMTP: so the probe goes alone).
        sendgrid._faults.clear()
        await asyncio.sleep(1.1)
        probe = await batch(h, 1, "p")
        second = await batch(h, 30, "b")
        bodies = [(await h.client.get(f"/v1/notifications/{nid}")).json() for nid in first + probe + second]
    providers = collections.Counter(b["deliveries"][0]["provider"] for b in bodies)
    via_sg = [r.json["personalizations"][0]["custom_args"]["herald_delivery_id"] for r in sendgrid.sent]
    via_smtp = smtp_server.handler.delivery_ids()
    delivered = collections.Counter(via_sg + via_smtp)
    print(f"\nfailover: sendgrid tried while down={tried_while_down} providers={dict(providers)}")
    assert len(delivered) == 61 and max(delivered.values()) == 1  # nothing lost, nothing twice
    assert all(b["deliveries"][0]["status"] == "sent" for b in bodies)
    assert sum(1 for b in bodies[:30] if b["deliveries"][0]["provider"] == "smtp") == 30
    assert bodies[30]["deliveries"][0]["provider"] == "sendgrid"  # the probe
    assert sum(1 for b in bodies[31:] if b["deliveries"][0]["provider"] == "sendgrid") == 30


async def test_twilio_callbacks_are_verified_and_applied(tmp_path: Path, twilio: TwilioEmulator) -> None:
    settings = make_settings(
        tmp_path,
        server={"public_url": PUBLIC},
        providers={
            "twilio": {
                "account_sid": DEFAULT_ACCOUNT_SID,
                "auth_token": DEFAULT_AUTH_TOKEN,
                "from_number": "+15017122661",
                "base_url": twilio.url,
                "status_callback_base_url": PUBLIC,
            }
        },
        channels={"sms": {"providers": ["twilio"]}},
    )
    async with running_herald(settings) as h:
        await h.client.put("/v1/users/u1", json={"phone": "+14155550100"})
        r = await h.client.post(
            "/v1/notifications", json={"to": "u1", "content": {"text": "code 1"}, "channels": ["sms"]}
        )
        body = await h.wait_final(r.json()["id"])
        d = body["deliveries"][0]
        assert d["status"] == "sent"
        (sid,) = list(twilio.messages)
        url, params, signature = twilio.status_callback(sid, "delivered")
        assert RequestValidator(DEFAULT_AUTH_TOKEN).validate(url, params, signature)  # the official check
        assert signature == RequestValidator(DEFAULT_AUTH_TOKEN).compute_signature(url, params)
        path = url[len(PUBLIC) :]
        assert urlsplit(url).query == f"delivery_id={d['id']}"
        async with httpx.AsyncClient(base_url=h.base_url) as anon:
            tampered = {**params, "MessageStatus": "undelivered"}
            r = await anon.post(path, data=tampered, headers={"X-Twilio-Signature": signature})
            assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
            r = await anon.post(path, data=params)
            assert r.status_code == 403
            assert (await h.client.get(f"/v1/notifications/{body['id']}")).json()["deliveries"][0][
                "status"
            ] == "sent"
            r = await anon.post(path, data=params, headers={"X-Twilio-Signature": signature})
            assert r.status_code == 200 and r.json()["outcomes"] == {"applied": 1}
            r = await anon.post(path, data=params, headers={"X-Twilio-Signature": signature})
            assert r.json()["outcomes"] == {"duplicate": 1}
        d = (await h.client.get(f"/v1/notifications/{body['id']}")).json()["deliveries"][0]
        assert d["status"] == "delivered" and d["delivered_at"] is not None


async def test_sendgrid_events_bounce_suppresses_and_replays_apply_once(
    tmp_path: Path, sendgrid: SendGridEmulator
) -> None:
    settings = make_settings(
        tmp_path,
        providers={"sendgrid": sg_config(sendgrid, event_webhook_max_age=300)},
        channels={"email": {"providers": ["sendgrid"]}},
    )
    async with running_herald(settings) as h:
        for uid in ("u1", "u2"):
            await h.client.put(f"/v1/users/{uid}", json={"email": f"{uid}@example.com"})
        ids = []
        for uid in ("u1", "u2"):
            r = await h.client.post(
                "/v1/notifications",
                json={"to": uid, "content": {"subject": "s", "text": "t"}, "channels": ["email"]},
            )
            ids.append((await h.wait_final(r.json()["id"]))["deliveries"][0]["id"])
        rec1, rec2 = sendgrid.sent
        bounce = sendgrid.events_for(rec1, "bounce")
        opened = sendgrid.events_for(rec2, "delivered", "open")
        async with httpx.AsyncClient(base_url=h.base_url) as anon:

            async def post(payload: bytes, sig: tuple[str, str] | None = None) -> httpx.Response:
                signature, ts = sig or sendgrid.sign(payload)
                return await anon.post(
                    "/v1/webhooks/sendgrid",
                    content=payload,
                    headers={
                        "content-type": "application/json",
                        "X-Twilio-Email-Event-Webhook-Signature": signature,
                        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
                    },
                )

            forged = json.loads(bounce)
            forged[0]["email"] = "someone-else@example.com"
            r = await post(json.dumps(forged).encode(), sendgrid.sign(bounce))
            assert r.status_code == 403
            stale = sendgrid.sign(bounce, timestamp=str(int(time.time()) - 3600))
            assert (await post(bounce, stale)).status_code == 403
            assert await h.container.store.suppressed("email", ["u1@example.com"]) == set()

            r = await post(bounce)
            assert r.status_code == 200 and r.json()["outcomes"] == {"applied": 1}
            r = await post(bounce)  # replayed sg_event_id
            assert r.json()["outcomes"] == {"duplicate": 1}
            r = await post(opened)
            assert r.json()["outcomes"] == {"applied": 2}
        d1 = await h.container.store.get_delivery(ids[0])
        d2 = await h.container.store.get_delivery(ids[1])
        assert d1 is not None and d1.status.value == "failed"
        assert d2 is not None and d2.status.value == "read"
        assert await h.container.store.suppressed("email", ["u1@example.com"]) == {"u1@example.com"}
        # The next email to the bounced address is skipped without calling SendGrid.
        before = len(sendgrid.requests)
        r = await h.client.post(
            "/v1/notifications",
            json={"to": "u1", "content": {"subject": "s", "text": "t"}, "channels": ["email"]},
        )
        d = (await h.wait_final(r.json()["id"]))["deliveries"][0]
        assert d["status"] == "skipped" and d["reason"] == "invalid_address"
        assert len(sendgrid.requests) == before


async def test_no_secret_token_or_whole_address_reaches_the_logs(
    tmp_path: Path, sendgrid: SendGridEmulator, twilio: TwilioEmulator
) -> None:
    settings = make_settings(
        tmp_path,
        providers={
            "sendgrid": sg_config(sendgrid),
            "twilio": {
                "account_sid": DEFAULT_ACCOUNT_SID,
                "auth_token": DEFAULT_AUTH_TOKEN,
                "from_number": "+15017122661",
                "base_url": twilio.url,
            },
        },
        channels={"email": {"providers": ["sendgrid"]}, "sms": {"providers": ["twilio"]}},
    )
    with structlog.testing.capture_logs() as logs:
        async with running_herald(settings) as h:
            await h.client.put(
                "/v1/users/u1", json={"email": "secret.person@example.com", "phone": "+14155550142"}
            )
            sendgrid.fail_next("custom", status=503, message="down")
            twilio.fail_next(
                "custom", status=400, code=21211, message="The 'To' number +14155550142 is not valid."
            )
            r = await h.client.post(
                "/v1/notifications",
                json={"to": "u1", "content": {"subject": "s", "text": "t"}, "channels": ["email", "sms"]},
            )
            await eventually(
                lambda: asyncio.sleep(0, result=len(sendgrid.requests) >= 1 and len(twilio.requests) >= 1)
            )
            await asyncio.sleep(0.5)
            assert r.status_code == 202
    text = "\n".join(repr(e) for e in logs)
    assert logs, "expected some log events"
    for secret in (DEFAULT_API_KEY, DEFAULT_AUTH_TOKEN, "secret.person@example.com", "+14155550142", h.key):
        assert secret not in text, secret


async def test_push_goes_through_the_provider_of_the_device_kind_end_to_end(tmp_path: Path) -> None:
    import orjson
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.emulators.webpush import WebPushEmulator

    emu = WebPushEmulator()
    await emu.start()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    settings = make_settings(
        tmp_path,
        providers={
            "webpush": {
                "vapid_private_key": pem,
                "vapid_subject": "mailto:ops@herald.example.com",
                "allowed_hosts": [emu.base_url.removeprefix("http://")],
            }
        },
        channels={"push": {"providers": ["webpush"]}},
    )
    try:
        async with running_herald(settings) as h:
            await h.client.put("/v1/users/u1", json={})
            subscription = emu.create_subscription()
            r = await h.client.post(
                "/v1/users/u1/devices", json={"kind": "webpush", "token": json.dumps(subscription)}
            )
            assert r.status_code == 201
            await h.client.put("/v1/users/u2", json={})
            await h.client.post(
                "/v1/users/u2/devices", json={"kind": "fcm", "token": "fcm-token-without-provider"}
            )
            r = await h.client.post(
                "/v1/notifications",
                json={
                    "to": ["u1", "u2"],
                    "content": {"title": "Order ready", "body": "Counter 3"},
                    "channels": ["push"],
                },
            )
            nid = r.json()["id"]

            async def settled() -> dict[str, Any] | None:
                body = (await h.client.get(f"/v1/notifications/{nid}")).json()
                states = {d["user_id"]: d for d in body.get("deliveries", [])}
                return (
                    states
                    if states.get("u1", {}).get("status") == "sent" and states.get("u2", {}).get("attempts")
                    else None
                )

            states = await eventually(settled)
        (record,) = emu.received
        payload = orjson.loads(record.plaintext)
        assert payload["title"] == "Order ready" and payload["body"] == "Counter 3"
        assert payload["herald"]["delivery_id"] == states["u1"]["id"]
        assert "_meta" not in payload
        assert states["u1"]["provider"] == "webpush"
        # No FCM provider configured: a configuration error held for ops, not the user's fault.
        assert (
            states["u2"]["status"] == "retrying" and states["u2"]["attempts"][0]["outcome"] == "config_error"
        )
    finally:
        await emu.stop()


async def test_webhook_deliveries_to_internal_addresses_fail_blocked_and_reach_nothing(
    tmp_path: Path,
) -> None:
    from aiohttp import web

    hits: list[str] = []

    async def canary_handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", canary_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = make_settings(
        tmp_path,
        providers={"webhook": {"signing_secret": "s" * 32, "timeout": 2}},
        channels={"webhook": {"providers": ["webhook"]}},
    )
    urls = [
        f"http://127.0.0.1:{port}/hook",
        f"http://[::1]:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        f"http://2130706433:{port}/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
    ]
    try:
        async with running_herald(settings) as h:
            for i, url in enumerate(urls):
                assert (await h.client.put(f"/v1/users/w{i}", json={"webhook_url": url})).status_code == 200
            r = await h.client.put("/v1/users/wf", json={"webhook_url": "file:///etc/passwd"})
            assert r.status_code == 422  # not even stored
            r = await h.client.post(
                "/v1/notifications",
                json={
                    "to": [f"w{i}" for i in range(len(urls))],
                    "content": {"body": "x"},
                    "channels": ["webhook"],
                },
            )
            body = await h.wait_final(r.json()["id"])
        for d in body["deliveries"]:
            assert d["status"] == "failed" and d["reason"] == "blocked_address", d
            assert d["attempts"][0]["code"] == "blocked_address"
        assert hits == []
    finally:
        await runner.cleanup()
