"""Provider connections by priority (adapters/providers/slots.py): critical and high never wait
behind low for a connection (issue 23)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from herald.adapters.providers.http import ProviderHttp
from herald.adapters.providers.slots import PrioritySlots, reserved_share

CRITICAL, HIGH, NORMAL, LOW = 0, 1, 2, 3


async def _started(coro: asyncio.Future[None] | asyncio.Task[None]) -> bool:
    """Whether the acquisition completed after the loop ran everything ready."""
    for _ in range(5):
        await asyncio.sleep(0)
    return coro.done()


async def test_bulk_never_holds_the_reserved_slots() -> None:
    slots = PrioritySlots(4, reserved=1)
    for _ in range(3):
        await slots.acquire(LOW)
    fourth_low = asyncio.ensure_future(slots.acquire(LOW))
    assert not await _started(fourth_low)  # the last slot is critical/high's
    await slots.acquire(CRITICAL)  # at once, with every bulk slot taken and a bulk waiter queued
    assert slots.used == 4
    slots.release(CRITICAL)
    assert not await _started(fourth_low)  # the freed slot is still the reserved one
    slots.release(LOW)
    assert await _started(fourth_low)
    assert slots.bulk_used == 3


async def test_a_freed_slot_goes_to_the_highest_lane_first() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(LOW)
    order: list[str] = []

    async def take(name: str, rank: int) -> None:
        await slots.acquire(rank)
        order.append(name)
        slots.release(rank)

    waiters = [
        asyncio.create_task(take("low-1", LOW)),
        asyncio.create_task(take("normal", NORMAL)),
        asyncio.create_task(take("low-2", LOW)),
        asyncio.create_task(take("critical", CRITICAL)),
        asyncio.create_task(take("high", HIGH)),
    ]
    await asyncio.sleep(0)
    slots.release(LOW)
    await asyncio.wait_for(asyncio.gather(*waiters), 20)
    assert order == ["critical", "high", "normal", "low-1", "low-2"]
    assert slots.used == 0 and slots.bulk_used == 0


async def test_a_cancelled_waiter_takes_nothing_and_blocks_nobody() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(LOW)
    gone = asyncio.create_task(slots.acquire(CRITICAL))
    later = asyncio.create_task(slots.acquire(LOW))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.release(LOW)
    await asyncio.wait_for(later, 20)
    assert slots.used == 1 and slots.waiting == 0


def test_shares() -> None:
    assert reserved_share(1) == 0
    assert reserved_share(4) == 1
    assert reserved_share(64) == 8
    assert PrioritySlots(3, reserved=10).reserved == 2  # the bulk keeps at least one


async def test_an_http_provider_sends_critical_while_low_sends_hold_every_bulk_connection() -> None:
    """Four connections, low sends stuck at the provider on three of them (the bulk's share),
    more low sends queued: a critical send still goes out and is answered."""
    release = asyncio.Event()
    arrived: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.text()
        arrived.append(body)
        if body.startswith("low"):
            await release.wait()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/send", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    http = ProviderHttp(
        provider="test", base_url=f"http://127.0.0.1:{port}", timeout=30, headers={}, max_connections=4
    )
    url = http.url("/send")
    try:
        lows = [
            asyncio.create_task(http.post(url, body=f"low {i}".encode(), content_type="text/plain", rank=LOW))
            for i in range(6)
        ]
        for _ in range(200):
            if len(arrived) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(arrived) == 3  # the bulk's share: 3 of 4
        answer = await asyncio.wait_for(
            http.post(url, body=b"critical", content_type="text/plain", rank=CRITICAL), 20
        )
        assert answer.status == 202
        assert arrived[-1] == "critical" and len(arrived) == 4  # no low send went before it
        release.set()
        assert {a.status for a in await asyncio.wait_for(asyncio.gather(*lows), 20)} == {202}
    finally:
        release.set()
        await http.close()
        await runner.cleanup()
