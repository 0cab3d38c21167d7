"""Issue: delivery you can trust — retries, dead letters, idempotency, scheduling, priority, expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from herald.testing import FakeClock, RecordingProvider
from tests.emulators.sendgrid import DEFAULT_API_KEY, SendGridEmulator
from tests.support.alerts import AlertSink
from tests.support.herald import make_settings, running_herald
from tests.support.smtp import SmtpTestServer
from tests.support.waits import MAIL, add_user, delivery, eventually, send, tick, wait_status

pytestmark = pytest.mark.usefixtures("stack")  # embedded and scale-out (tests/support/stack.py)

async def test_451_twice_then_250_is_sent_on_the_third_attempt_on_schedule(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    smtp_server.handler.data_replies.extend(["451 4.3.0 Try again later", "451 4.3.0 Try again later"])
    clock = FakeClock()
    async with running_herald(make_settings(tmp_path, smtp_port=smtp_server.port), clock=clock) as h:
        await add_user(h)
        nid = await send(h)
        d = await wait_status(h, nid, "retrying", attempts=1)
        assert d["attempts"][0]["outcome"] == "transient" and d["attempts"][0]["code"].startswith("451")
        tick(h, clock, 59)
        await asyncio.sleep(0.3)
        assert len((await delivery(h, nid))["attempts"]) == 1  # not before its due time
        tick(h, clock, 8)  # 67 s: past 60 s + at most 10 % jitter
        d = await wait_status(h, nid, "retrying", attempts=2)
        tick(h, clock, 331)
        d = await wait_status(h, nid, "sent", attempts=3)
    at = [time.mktime(time.strptime(a["at"][:19], "%Y-%m-%dT%H:%M:%S")) for a in d["attempts"]]
    assert 60 <= at[1] - at[0] <= 67
    assert 300 <= at[2] - at[1] <= 331
    assert [a["outcome"] for a in d["attempts"]] == ["transient", "transient", "ok"]
    assert len(smtp_server.handler.received) == 1


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendGridEmulator]:
    emu = SendGridEmulator(verified_senders={"noreply@herald.example.com"})
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.spec_errors == []


def sendgrid_settings(tmp_path: Path, emu: SendGridEmulator, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        providers={
            "sendgrid": {
                "api_key": DEFAULT_API_KEY,
                "from_email": "noreply@herald.example.com",
                "base_url": emu.url,
                "timeout": 5,
            }
        },
        channels={"email": {"providers": ["sendgrid"]}},
        **extra,
    )


async def test_retry_after_from_an_http_provider_delays_the_next_attempt(
    tmp_path: Path, sendgrid: SendGridEmulator
) -> None:
    sendgrid.fail_next("custom", status=503, retry_after=120, message="busy")
    clock = FakeClock()
    async with running_herald(sendgrid_settings(tmp_path, sendgrid), clock=clock) as h:
        await add_user(h)
        nid = await send(h)
        d = await wait_status(h, nid, "retrying", attempts=1)
        assert d["attempts"][0]["code"] == "503"
        tick(h, clock, 100)  # the schedule alone would have retried after 60 s
        await asyncio.sleep(0.3)
        assert len((await delivery(h, nid))["attempts"]) == 1
        tick(h, clock, 21)
        d = await wait_status(h, nid, "sent", attempts=2)
    assert len(sendgrid.sent) == 1


async def test_550_5_1_1_fails_once_and_suppresses_the_address(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    smtp_server.handler.dead_mailboxes.add("gone@example.com")
    async with running_herald(make_settings(tmp_path, smtp_port=smtp_server.port)) as h:
        await add_user(h, "u2", "gone@example.com")
        nid = await send(h, "u2")
        d = await wait_status(h, nid, "failed")
        assert d["reason"] == "invalid_address" and len(d["attempts"]) == 1
        assert d["attempts"][0]["outcome"] == "dead_address" and d["attempts"][0]["code"] == "550 5.1.1"
        calls = smtp_server.handler.rcpt_calls
        nid2 = await send(h, "u2")
        body = await h.wait_final(nid2)
        d2 = body["deliveries"][0]
        assert d2["status"] == "skipped" and d2["reason"] == "invalid_address" and d2["attempts"] == []
        assert smtp_server.handler.rcpt_calls == calls  # the server was not contacted again


async def test_four_transient_failures_go_dead_alert_once_and_replay_delivers(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    smtp_server.handler.data_replies.extend(["451 4.3.0 Try again later"] * 4)
    sink = AlertSink()
    await sink.start()
    clock = FakeClock()
    settings = make_settings(tmp_path, smtp_port=smtp_server.port, alerts={"webhook_url": sink.url})
    try:
        async with running_herald(settings, clock=clock) as h:
            await add_user(h)
            nid = await send(h)
            for n, wait in ((1, 67), (2, 331), (3, 1981)):
                await wait_status(h, nid, "retrying", attempts=n)
                tick(h, clock, wait)
            d = await wait_status(h, nid, "dead", attempts=4)
            assert d["reason"] == "retries_exhausted"
            dead = (await h.client.get("/v1/dead-letters", params={"channel": "email"})).json()["items"]
            assert [x["id"] for x in dead] == [d["id"]]
            assert (await h.client.get("/v1/dead-letters", params={"channel": "sms"})).json()["items"] == []
            await eventually(lambda: asyncio.sleep(0, result=len(sink.received) == 1))
            (alert,) = sink.received
            assert alert["alert"] == "delivery_dead" and alert["channel"] == "email" and alert["count"] == 1
            assert alert["items"][0]["delivery_id"] == d["id"]

            r = await h.client.post(f"/v1/dead-letters/{d['id']}/replay")
            assert r.status_code == 200 and r.json()["replayed"] == 1
            d = await wait_status(h, nid, "sent", attempts=5)
            assert [a["outcome"] for a in d["attempts"]] == ["transient"] * 4 + ["ok"]
            assert (await h.client.get("/v1/dead-letters")).json()["items"] == []
            again = await h.client.post(f"/v1/dead-letters/{d['id']}/replay")
            assert again.status_code == 409
        assert len(sink.received) == 1
        assert len(smtp_server.handler.received) == 1
    finally:
        await sink.stop()


async def test_fifty_concurrent_requests_with_one_idempotency_key(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    async with running_herald(make_settings(tmp_path, smtp_port=smtp_server.port)) as h:
        await add_user(h)
        body = {"to": "u1", "content": MAIL, "channels": ["email"]}
        responses = await asyncio.gather(
            *(
                h.client.post("/v1/notifications", json=body, headers={"Idempotency-Key": "same"})
                for _ in range(50)
            )
        )
        codes = [r.status_code for r in responses]
        assert set(codes) <= {202, 409}, codes
        ids = {r.json()["id"] for r in responses if r.status_code == 202}
        assert len(ids) == 1
        for r in responses:
            if r.status_code == 409:
                assert r.headers["content-type"] == "application/problem+json"
        (nid,) = ids
        await h.wait_final(nid)
        listed = (await h.client.get("/v1/notifications")).json()["items"]
        assert [n["id"] for n in listed] == [nid]
        r = await h.client.post(
            "/v1/notifications",
            json={**body, "content": {"subject": "x", "text": "y"}},
            headers={"Idempotency-Key": "same"},
        )
        assert r.status_code == 422
        # After the first finished, a retry gets the original response.
        r = await h.client.post("/v1/notifications", json=body, headers={"Idempotency-Key": "same"})
        assert r.status_code == 202 and r.json()["id"] == nid
        # Keys are scoped per API key: another key may reuse the name.
        other = await h.new_key("send")
        r = await h.client.post(
            "/v1/notifications",
            json=body,
            headers={"Idempotency-Key": "same", "Authorization": f"Bearer {other}"},
        )
        assert r.status_code == 202 and r.json()["id"] != nid
        await h.wait_final(r.json()["id"])
    print(f"\nidempotency: 202={codes.count(202)} 409={codes.count(409)}")
    assert len(smtp_server.handler.received) == 2


async def test_dedup_key_skips_a_second_send_within_the_window(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    async with running_herald(make_settings(tmp_path, smtp_port=smtp_server.port)) as h:
        await add_user(h)
        await add_user(h, "u2", "u2@example.com")
        first = await send(h, dedup_key="txn-9:order_shipped")
        await h.wait_final(first)
        second = await h.client.post(
            "/v1/notifications",
            json={
                "to": ["u1", "u2"],
                "content": MAIL,
                "channels": ["email"],
                "dedup_key": "txn-9:order_shipped",
            },
        )
        body = await h.wait_final(second.json()["id"])
        by_user = {d["user_id"]: d for d in body["deliveries"]}
        assert by_user["u1"]["status"] == "skipped" and by_user["u1"]["reason"] == "duplicate"
        assert by_user["u2"]["status"] == "sent"
    assert sorted(r.rcpt_tos[0] for r in smtp_server.handler.received) == ["u1@example.com", "u2@example.com"]


async def test_send_at_cancel_and_expiry_follow_the_clock(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    clock = FakeClock()
    start = clock.now()

    def iso(ts: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

    async with running_herald(make_settings(tmp_path, smtp_port=smtp_server.port), clock=clock) as h:
        await add_user(h)
        later = await send(h, send_at=iso(start + 3600))
        cancelled = await send(h, send_at=iso(start + 3600))
        expiring = await send(h, send_at=iso(start + 3600), expires_at=iso(start + 3700))
        for nid in (later, cancelled):
            assert (await wait_status(h, nid, "scheduled"))["next_attempt_at"].startswith(
                iso(start + 3600)[:16]
            )
        r = await h.client.post(f"/v1/notifications/{cancelled}/cancel")
        assert r.json()["cancelled"] == 1
        tick(h, clock, 3500)
        await asyncio.sleep(0.3)
        assert smtp_server.handler.received == []  # not before send_at
        tick(h, clock, 201)  # past send_at and past the third one's expires_at
        d = await wait_status(h, later, "sent")
        d = await wait_status(h, expiring, "skipped")
        assert d["reason"] == "expired"
        assert all(a["outcome"] == "expired" for a in d["attempts"])
        assert (await delivery(h, cancelled))["status"] == "cancelled"
        r = await h.client.post(f"/v1/notifications/{later}/cancel")
        assert r.json()["cancelled"] == 0 and "already sent" in r.json()["detail"]
        assert (await delivery(h, later))["status"] == "sent"
        # A delivery retrying when it expires is skipped too.
        smtp_server.handler.data_replies.append("451 4.3.0 later")
        retrying = await send(h, expires_at=iso(clock.now() + 100))
        await wait_status(h, retrying, "retrying")
        tick(h, clock, 101)
        d = await wait_status(h, retrying, "skipped")
        assert d["reason"] == "expired"
    assert [r.rcpt_tos[0] for r in smtp_server.handler.received] == ["u1@example.com"]


async def test_critical_is_not_stuck_behind_twenty_thousand_low(tmp_path: Path) -> None:
    provider = RecordingProvider("slowmail", delay=0.02)
    settings = make_settings(
        tmp_path, channels={"email": {"providers": ["slowmail"], "concurrency": 32, "reserved_high": 4}}
    )
    async with running_herald(settings, providers={"slowmail": provider}) as h:
        await add_user(h)
        # "system", not "marketing": marketing's per-user budget (3/day) would skip all but three.
        low = {"to": "u1", "content": MAIL, "channels": ["email"], "priority": "low", "category": "system"}
        for _ in range(20):
            r = await h.client.post("/v1/notifications/batch", json={"notifications": [low] * 1000})
            assert r.json()["accepted"] == 1000

        async def routed() -> bool:
            depth = await h.container.store.queue_depth()
            sent = len(provider.sent)
            return sum(n for _, _, n in depth) + sent >= 20_000 and sent > 200

        try:
            await eventually(routed, timeout=120)
        except AssertionError:
            # What a timeout shows: how far routing, the queue and the sends got.
            stats = (await h.client.get("/v1/stats")).json()
            depth = await h.container.store.queue_depth()
            relay = h.container.relay
            raise AssertionError(
                f"not routed and sending in 120 s: sent={len(provider.sent)} queued={depth} "
                f"by_status={stats.get('by_status')} relayed={relay.relayed if relay else None}"
            ) from None
        before = len(provider.sent)
        crit = await send(h, priority="critical", category="security")
        await eventually(
            lambda: asyncio.sleep(0, result=any(m.notification_id == crit for m in provider.sent))
        )
        position = next(i for i, m in enumerate(provider.sent) if m.notification_id == crit)
        low_before = position - before
        print(f"\npriority: {low_before} low deliveries were sent between the critical accept and its send")
        assert low_before < 100


async def test_bad_credentials_hold_the_delivery_and_tell_ops_without_blaming_the_user(
    tmp_path: Path, sendgrid: SendGridEmulator
) -> None:
    sink = AlertSink()
    await sink.start()
    clock = FakeClock()
    settings = sendgrid_settings(tmp_path, sendgrid, alerts={"webhook_url": sink.url})
    settings.providers.model_extra["sendgrid"]["api_key"] = "SG.wrong"  # type: ignore[index]
    try:
        async with running_herald(settings, clock=clock) as h:
            await add_user(h)
            nid = await send(h)
            d = await wait_status(h, nid, "retrying", attempts=1)
            assert d["attempts"][0]["outcome"] == "config_error" and d["reason"] == "provider_config_error"
            ready = (await h.client.get("/readyz")).json()
            assert ready["unhealthy_providers"]["sendgrid"]["reason"] == "config_error"
            await eventually(lambda: asyncio.sleep(0, result=len(sink.received) == 1))
            assert sink.received[0]["alert"] == "provider_config_error"
            # Held far longer than the schedule would retry, and without spending the retry budget:
            # four more config errors still leave the delivery alive.
            for n in range(2, 6):
                tick(h, clock, 61)
                await wait_status(h, nid, "retrying", attempts=n)
            assert (await h.client.get("/v1/dead-letters")).json()["items"] == []
            # The address is not suppressed: the user is not blamed.
            assert await h.container.store.suppressed("email", ["u1@example.com"]) == set()
            # Credentials fixed (the emulator now accepts the key herald sends): delivered.
            sendgrid.api_key = "SG.wrong"
            tick(h, clock, 61)
            d = await wait_status(h, nid, "sent")
            assert (await h.client.get("/readyz")).json()["unhealthy_providers"] == {}
    finally:
        await sink.stop()
