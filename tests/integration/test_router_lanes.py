"""A `herald worker` that sends some lanes only routes those lanes' new notifications: an urgent
worker (critical, high) leaves normal and low to the bulk workers' routers, so no pass of a low
flood is under way in it when a critical notification comes; a bulk worker leaves critical and
high to the urgent ones. `herald serve` (and a worker of every lane) routes everything."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from herald.bootstrap import Container, build
from herald.config import Settings, check_lanes
from herald.domain.models import NotificationStatus, Priority
from tests.contract.conftest import make_notification
from tests.support.herald import make_settings


def _lanes(settings: Settings, lanes: list[Priority]) -> Settings:
    for ch in settings.channels.values():
        ch.lanes = check_lanes(lanes)
    return settings


async def _statuses(c: Container, ids: list[str]) -> list[NotificationStatus]:
    out = []
    for nid in ids:
        n = await c.store.get_notification(nid)
        assert n is not None
        out.append(n.status)
    return out


async def _route_one_pass(
    c: Container, lanes: list[Priority], *, own: bool
) -> dict[Priority, NotificationStatus]:
    """Start the roles as `herald worker --lanes` does (``own``) or as `herald serve` does, commit
    one notification of every lane (low first) and return their statuses once the router's
    first pass has claimed something."""
    c.start_roles({"router", "worker"}, route_own_lanes=own)
    now = time.time()
    made = [make_notification(priority=p, created_at=now + i) for i, p in enumerate(reversed(list(Priority)))]
    await c.store.create_notifications(made)
    c.router.wake()
    mine = [n.id for n in made if n.priority in lanes]
    deadline = time.monotonic() + 20
    while NotificationStatus.ACCEPTED in await _statuses(c, mine):
        assert time.monotonic() < deadline, "the router did not route its own lanes"
        await asyncio.sleep(0.02)
    return dict(zip([n.priority for n in made], await _statuses(c, [n.id for n in made]), strict=True))


async def test_an_urgent_worker_routes_critical_and_high_only(tmp_path: Path) -> None:
    urgent = [Priority.CRITICAL, Priority.HIGH]
    c = await build(_lanes(make_settings(tmp_path), urgent))
    try:
        statuses = await _route_one_pass(c, urgent, own=True)
        assert (c.router.min_rank, c.router.max_rank) == (0, 1)
    finally:
        await c.stop()
    # normal and low were committed before the critical one and would have been claimed with it
    assert statuses[Priority.NORMAL] == statuses[Priority.LOW] == NotificationStatus.ACCEPTED
    assert statuses[Priority.CRITICAL] != NotificationStatus.ACCEPTED


async def test_a_bulk_worker_routes_normal_and_low_only(tmp_path: Path) -> None:
    bulk = [Priority.NORMAL, Priority.LOW]
    c = await build(_lanes(make_settings(tmp_path), bulk))
    try:
        statuses = await _route_one_pass(c, bulk, own=True)
        assert (c.router.min_rank, c.router.max_rank) == (2, 3)
    finally:
        await c.stop()
    assert statuses[Priority.CRITICAL] == statuses[Priority.HIGH] == NotificationStatus.ACCEPTED


async def test_serve_routes_every_lane_whatever_it_sends_itself(tmp_path: Path) -> None:
    """`herald serve` may send only the critical lane itself (its children the rest, which do
    not route): its router must route every lane."""
    c = await build(_lanes(make_settings(tmp_path), [Priority.CRITICAL]))
    try:
        statuses = await _route_one_pass(c, list(Priority), own=False)
        assert (c.router.min_rank, c.router.max_rank) == (0, 3)
    finally:
        await c.stop()
    assert NotificationStatus.ACCEPTED not in statuses.values()
