"""Issue 23: a broadcast whose deliveries render to the same content goes to SendGrid in batched
requests (personalizations), each delivery keeping its own status, attempt, receipt and callback;
a per-user field keeps sends apart; a refusal that may concern one recipient is isolated; an
outage retries every delivery of the batch. Against the SendGrid emulator with its OpenAPI
validation on (every request must match SendGrid's spec)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.sendgrid import DEFAULT_API_KEY, SendGridEmulator
from tests.support.herald import Running, make_settings, running_herald

USERS = 60


@pytest.fixture
async def emulator() -> AsyncIterator[SendGridEmulator]:
    emu = SendGridEmulator()
    await emu.start()
    yield emu
    await emu.stop()
    assert emu.spec_errors == []


def _settings(tmp_path: Path, emulator: SendGridEmulator, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        channels={"email": {"providers": ["sendgrid"], "concurrency": 4, "reserved_high": 1}},
        providers={
            "console": {"path": str(tmp_path / "console.jsonl")},
            "sendgrid": {
                "api_key": DEFAULT_API_KEY,
                "from_email": "news@herald.example.com",
                "base_url": emulator.url,
                "timeout": 5,
            },
        },
        retry={"schedule": [0.0, 0.2, 0.2, 0.2], "jitter": 0},
        **extra,
    )


async def _topic(h: Running, n: int, *, name: str = "news") -> None:
    assert (await h.client.put(f"/v1/topics/{name}", json={"name": name})).status_code in (200, 201)
    for i in range(n):
        uid = f"u{i:03d}"
        r = await h.client.put(f"/v1/users/{uid}", json={"email": f"{uid}@example.com", "data": {"n": i}})
        assert r.status_code in (200, 201), r.text
    r = await h.client.post(
        f"/v1/topics/{name}/subscribers", json={"user_ids": [f"u{i:03d}" for i in range(n)]}
    )
    assert r.status_code in (200, 201, 204), r.text


async def _final(h: Running, nid: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await h.client.get(f"/v1/notifications/{nid}")).json()
        deliveries = body.get("deliveries") or []
        if body.get("status") != "routing" and deliveries and all(
            d["status"] in ("sent", "failed", "dead", "skipped") for d in deliveries
        ):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"not final after {timeout}s: {body}")


def _personalizations(emulator: SendGridEmulator) -> list[dict[str, Any]]:
    return [p for r in emulator.sent if r.answered in (200, 202) for p in r.json["personalizations"]]


async def test_identical_content_goes_out_in_batched_requests_each_delivery_tracked(
    tmp_path: Path, emulator: SendGridEmulator
) -> None:
    async with running_herald(_settings(tmp_path, emulator)) as h:
        await _topic(h, USERS)
        r = await h.client.post(
            "/v1/notifications",
            json={
                "to": {"topic": "news"},
                "content": {
                    "subject": "Maintenance tonight",
                    "text": "From 22:00 to 23:00 UTC.",
                    # Tracked: each delivery's own open pixel and click link.
                    "html": '<p>From 22:00 to 23:00 UTC, <a href="https://status.example.com/">status</a>.</p>',
                },
                "channels": ["email"],
                "category": "system",  # opt-out: each recipient's own unsubscribe link
            },
        )
        assert r.status_code == 202, r.text
        body = await _final(h, r.json()["id"])
    deliveries = body["deliveries"]
    assert len(deliveries) == USERS and {d["status"] for d in deliveries} == {"sent"}
    requests = [x for x in emulator.sent if x.answered == 202]
    # Fewer requests than recipients: batched (4 send slots, claims of up to 1,000).
    assert len(requests) < USERS
    assert max(len(x.json["personalizations"]) for x in requests) > 1
    people = _personalizations(emulator)
    # Each delivery exactly once, to its own address, with its own ids and unsubscribe link.
    by_delivery = Counter(p["custom_args"]["herald_delivery_id"] for p in people)
    assert set(by_delivery) == {d["id"] for d in deliveries} and set(by_delivery.values()) == {1}
    addresses = {d["id"]: f"{d['user_id']}@example.com" for d in deliveries}
    for p in people:
        assert p["to"] == [{"email": addresses[p["custom_args"]["herald_delivery_id"]]}]
        assert p["custom_args"]["herald_notification_id"] == body["id"]
        assert p["headers"]["List-Unsubscribe"].startswith("<http")
    assert len({p["headers"]["List-Unsubscribe"] for p in people}) == USERS
    # Each delivery's own tracking URLs, as substitutions of the shared html's tags.
    html = next(c["value"] for c in requests[0].json["content"] if c["type"] == "text/html")
    assert "-herald-url-0-" in html and "/t/o/" not in html
    pixels = [p["substitutions"] for p in people]
    assert all(any("/t/o/" in url for url in subs.values()) for subs in pixels)
    assert len({url for subs in pixels for url in subs.values()}) == sum(len(s) for s in pixels)
    # Every delivery has its own attempt and the request's message id as its receipt.
    for d in deliveries:
        assert [a["outcome"] for a in d["attempts"]] == ["ok"]


async def test_per_user_content_is_sent_one_by_one(tmp_path: Path, emulator: SendGridEmulator) -> None:
    async with running_herald(_settings(tmp_path, emulator)) as h:
        await _topic(h, 12)
        r = await h.client.post(
            "/v1/notifications",
            json={
                "to": {"topic": "news"},
                "content": {"subject": "Hi", "text": "You are number {{ user.data.n }}."},
                "channels": ["email"],
            },
        )
        assert r.status_code == 202, r.text
        body = await _final(h, r.json()["id"])
    assert {d["status"] for d in body["deliveries"]} == {"sent"}
    requests = [x for x in emulator.sent if x.answered == 202]
    assert len(requests) == 12 and all(len(x.json["personalizations"]) == 1 for x in requests)


async def test_an_outage_retries_every_delivery_of_the_batch(
    tmp_path: Path, emulator: SendGridEmulator
) -> None:
    emulator.fail_next("unavailable", count=1)
    async with running_herald(_settings(tmp_path, emulator)) as h:
        await _topic(h, 20)
        r = await h.client.post(
            "/v1/notifications",
            json={"to": {"topic": "news"}, "content": {"subject": "S", "text": "T"}, "channels": ["email"]},
        )
        assert r.status_code == 202, r.text
        body = await _final(h, r.json()["id"])
    assert {d["status"] for d in body["deliveries"]} == {"sent"}
    people = Counter(p["custom_args"]["herald_delivery_id"] for p in _personalizations(emulator))
    assert set(people.values()) == {1} and len(people) == 20  # each delivered once, after the retry
    retried = [d for d in body["deliveries"] if len(d["attempts"]) == 2]
    assert retried, "the failed batch's deliveries were retried"
    for d in retried:
        assert [a["outcome"] for a in d["attempts"]] == ["transient", "ok"]
