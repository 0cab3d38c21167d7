"""Express routing: a critical or high notification accepted by a process that also routes is
committed already leased to that router and routed at once, without the router's claim; the rest
goes the usual way, and a router that dies holding express work loses it to the next claim."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from herald.bootstrap import Container
from herald.domain.models import Notification
from tests.conftest import WELCOME
from tests.support.herald import Running, make_settings, running_herald

pytestmark = pytest.mark.usefixtures("stack")  # embedded and scale-out (tests/support/stack.py)


def _spy_claims(claimed: list[str]) -> Any:
    def configure(c: Container) -> None:
        original = c.store.claim_unrouted

        async def claim_unrouted(**kw: Any) -> list[Notification]:
            out = await original(**kw)
            claimed.extend(n.id for n in out)
            return out

        c.store.claim_unrouted = claim_unrouted  # type: ignore[method-assign]

    return configure


async def _send(h: Running, to: Any, priority: str) -> str:
    r = await h.client.post(
        "/v1/notifications",
        json={
            "to": to,
            "template": "welcome",
            "data": {"code": "7"},
            "channels": ["in_app"],
            "priority": priority,
        },
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def _ready(h: Running) -> None:
    assert (await h.client.put("/v1/templates/welcome", json=WELCOME)).status_code == 200
    for uid in ("ana", "bob"):
        assert (await h.client.put(f"/v1/users/{uid}", json={"data": {"name": uid}})).status_code == 200


async def test_critical_and_high_are_routed_at_accept_the_rest_by_the_routers_claim(tmp_path: Path) -> None:
    claimed: list[str] = []
    async with running_herald(make_settings(tmp_path), configure=_spy_claims(claimed)) as h:
        await _ready(h)
        critical = await _send(h, ["ana", "bob"], "critical")
        high = await _send(h, "ana", "high")
        low = await _send(h, "bob", "low")
        inline = await _send(h, [{"id": "guest", "email": "guest@example.com"}], "critical")
        bodies = {nid: await h.wait_final(nid) for nid in (critical, high, low)}
        await h.wait_final(inline)

    for nid, body in bodies.items():
        assert body["status"] == "completed", body
        assert {d["status"] for d in body["deliveries"]} == {"sent"}, (nid, body)
    assert len(bodies[critical]["deliveries"]) == 2
    assert critical not in claimed and high not in claimed  # routed without the router's claim
    assert low in claimed  # low: the usual pass
    assert inline in claimed  # inline recipients are not taken express


async def test_express_work_of_a_router_that_died_is_taken_over_when_its_lease_runs_out(
    tmp_path: Path,
) -> None:
    claimed: list[str] = []
    spy = _spy_claims(claimed)

    def configure(c: Container) -> None:
        spy(c)

        def dies_before_routing(notes: Sequence[Notification]) -> None:
            """As if the process died between the commit and the routing."""

        c.router.route_now = dies_before_routing  # type: ignore[method-assign]

    settings = make_settings(tmp_path, queue={"lease_seconds": 2})
    async with running_herald(settings, configure=configure) as h:
        await _ready(h)
        nid = await _send(h, "ana", "critical")
        r = await h.client.get(f"/v1/notifications/{nid}")
        assert r.json()["status"] == "routing" and r.json()["deliveries"] == []  # leased, not routed
        body = await h.wait_final(nid, timeout=15)

    assert body["status"] == "completed"
    assert [d["status"] for d in body["deliveries"]] == ["sent"]
    assert nid in claimed  # taken over by the router's claim of expired routing leases


async def test_express_notifications_accepted_during_a_round_are_routed_together_in_the_next(
    tmp_path: Path,
) -> None:
    """One round at a time per lane: what is accepted while a round is being written waits for
    it and goes in the next round, together (one by one it was two transactions each)."""
    rounds: list[int] = []
    gate = asyncio.Event()

    def configure(c: Container) -> None:
        original = c.store.save_routed_many

        async def save_routed_many(batches: Any, **kw: Any) -> list[bool]:
            rounds.append(len(batches))
            if len(rounds) == 1:
                await gate.wait()  # the first round is slow to commit
            return await original(batches, **kw)

        c.store.save_routed_many = save_routed_many  # type: ignore[method-assign]

    async with running_herald(make_settings(tmp_path), configure=configure) as h:
        await _ready(h)
        first = await _send(h, "ana", "high")
        while not rounds:
            await asyncio.sleep(0.01)
        rest = await asyncio.gather(*(_send(h, "bob", "high") for _ in range(10)))
        gate.set()
        bodies = [await h.wait_final(nid) for nid in [first, *rest]]

    assert all(b["status"] == "completed" for b in bodies)
    assert rounds[:2] == [1, 10]  # the ten accepted meanwhile: one round, one transaction
