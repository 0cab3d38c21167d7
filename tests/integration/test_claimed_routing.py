"""Claimed routing: the critical and high deliveries a process routes into lanes its own senders
serve are written already claimed by them (status ``sending`` under their lease) and sent at
once, without a queue claim, an outbox row or a broker round trip; as many as its senders have
free slots, the rest queued as usual. A process that dies between that commit and the send
leaves the lease to run out, and the delivery is sent by the next claim."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from herald.bootstrap import Container
from herald.domain.models import Delivery
from tests.conftest import WELCOME
from tests.support.herald import Running, make_settings, running_herald

pytestmark = pytest.mark.usefixtures("stack")  # embedded and scale-out (tests/support/stack.py)

USERS = ("ana", "bob", "cy", "dee", "eve")


def _spy_queue_claims(claimed: list[Delivery]) -> Any:
    def configure(c: Container) -> None:
        original = c.queue.claim

        async def claim(channel: str, **kw: Any) -> list[Delivery]:
            out = await original(channel, **kw)
            claimed.extend(out)
            return out

        c.queue.claim = claim  # type: ignore[method-assign]

    return configure


async def _ready(h: Running) -> None:
    assert (await h.client.put("/v1/templates/welcome", json=WELCOME)).status_code == 200
    for uid in USERS:
        assert (await h.client.put(f"/v1/users/{uid}", json={"data": {"name": uid}})).status_code == 200


async def _send(h: Running, to: Any, priority: str) -> str:
    body = {
        "to": to,
        "template": "welcome",
        "data": {"code": "7"},
        "channels": ["in_app"],
        "priority": priority,
    }
    r = await h.client.post("/v1/notifications", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def test_critical_and_high_are_sent_as_routed_the_rest_through_the_queue(tmp_path: Path) -> None:
    claimed: list[Delivery] = []
    async with running_herald(make_settings(tmp_path), configure=_spy_queue_claims(claimed)) as h:
        await _ready(h)
        critical = await _send(h, ["ana", "bob"], "critical")
        high = await _send(h, "cy", "high")
        low = await _send(h, "dee", "low")
        bodies = {nid: await h.wait_final(nid) for nid in (critical, high, low)}

    by_claim = {d.notification_id for d in claimed}
    for nid, body in bodies.items():
        assert body["status"] == "completed", body
        for d in body["deliveries"]:
            assert d["status"] == "sent", (nid, body)
            assert [(a["n"], a["outcome"]) for a in d["attempts"]] == [(1, "ok")]
    assert critical not in by_claim and high not in by_claim  # sent as routed: no queue claim
    assert low in by_claim  # low: claimed from the queue


async def test_only_as_many_as_the_senders_have_free_slots_are_taken_claimed(tmp_path: Path) -> None:
    claimed: list[Delivery] = []
    settings = make_settings(
        tmp_path, channels={"in_app": {"providers": ["in_app"], "concurrency": 2, "reserved_high": 1}}
    )
    async with running_herald(settings, configure=_spy_queue_claims(claimed)) as h:
        await _ready(h)
        nid = await _send(h, list(USERS), "critical")
        body = await h.wait_final(nid)

    assert body["status"] == "completed"
    assert sorted(d["status"] for d in body["deliveries"]) == ["sent"] * 5
    # Two slots free at the routing commit: two written claimed, three queued and claimed.
    assert len([d for d in claimed if d.notification_id == nid]) == 3


async def test_a_claimed_delivery_whose_sender_died_is_sent_once_its_lease_runs_out(tmp_path: Path) -> None:
    claimed: list[Delivery] = []
    spy = _spy_queue_claims(claimed)
    lost: list[str] = []

    def configure(c: Container) -> None:
        spy(c)

        def died_before_sending(deliveries: Sequence[Delivery]) -> None:
            """As if the process died between the routing commit and the send."""
            lost.extend(d.id for d in deliveries)

        c.delivery.start_claimed = died_before_sending  # type: ignore[method-assign]

    settings = make_settings(tmp_path, queue={"lease_seconds": 2})
    async with running_herald(settings, configure=configure) as h:
        await _ready(h)
        nid = await _send(h, "ana", "critical")
        body = await h.wait_final(nid, timeout=20)

    (d,) = body["deliveries"]
    assert lost == [d["id"]]
    assert d["status"] == "sent"
    # The expired lease is recorded as an ambiguous lost attempt, then the claim sends it.
    assert [(a["outcome"], a["ambiguous"]) for a in d["attempts"]] == [("lost", True), ("ok", False)]
    assert d["id"] in {x.id for x in claimed}
