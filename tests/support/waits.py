"""Waiting for herald to get somewhere, and the small steps most integration tests share.

``eventually`` polls until a condition holds, up to a deadline: the deadline is generous (the
suite must pass with both cores busy) and costs nothing when things go well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from herald.testing import FakeClock
from tests.support.herald import Running

MAIL = {"subject": "Hi", "text": "hello"}


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")


async def delivery(h: Running, nid: str, channel: str = "email") -> dict[str, Any]:
    body = (await h.client.get(f"/v1/notifications/{nid}")).json()
    for d in body.get("deliveries", []):
        if d["channel"] == channel:
            return dict(d)
    return {}


async def wait_status(h: Running, nid: str, *statuses: str, attempts: int | None = None) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        d = await delivery(h, nid)
        if d.get("status") in statuses and (attempts is None or len(d["attempts"]) == attempts):
            return d
        return None

    result: dict[str, Any] = await eventually(check)
    return result


async def send(h: Running, user: str = "u1", **extra: Any) -> str:
    """Post one email notification to ``user``; the notification's id."""
    body = {"to": user, "content": MAIL, "channels": ["email"], **extra}
    r = await h.client.post("/v1/notifications", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def add_user(h: Running, uid: str = "u1", email: str = "u1@example.com") -> None:
    assert (await h.client.put(f"/v1/users/{uid}", json={"email": email})).status_code == 200


def tick(h: Running, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    h.container.scheduler.wake()
