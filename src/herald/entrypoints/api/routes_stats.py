"""``GET /v1/stats``: the delivery funnel (services/stats.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from herald.entrypoints.api.deps import Caller, ContainerDep, require
from herald.entrypoints.api.schemas import IsoDatetime, epoch

router = APIRouter(tags=["operations"])


@router.get("/v1/stats")
async def stats(
    c: ContainerDep,
    who: Annotated[Caller, require("read")],
    by: Annotated[
        list[str], Query(description="group by template, category, channel and/or provider (repeat or comma)")
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    bucket: Annotated[str | None, Query(description="hour or day (UTC); none: the whole range")] = None,
    since: IsoDatetime | None = None,
    until: IsoDatetime | None = None,
    template: Annotated[str | None, Query(max_length=128)] = None,
    category: Annotated[str | None, Query(max_length=64)] = None,
    channel: Annotated[str | None, Query(max_length=16)] = None,
    provider: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    """The funnel over [since, until) (default: the last 7 days): sent, delivered, opened,
    clicked, bounced, failed, dead, skipped by reason, machine opens and clicks apart, and
    rates; per group of ``by`` and per ``bucket``. Read from hourly rollups, never a scan.

    Without ``by`` and ``bucket`` the answer also carries the current count of deliveries per
    status and channel (``by_status``, ``by_channel``, ``by_channel_provider``): that part
    counts the status log itself and slows down with millions of deliveries."""
    q = c.stats.query(
        by=by,
        bucket=bucket,
        since=epoch(since),
        until=epoch(until),
        filters={"template": template, "category": category, "channel": channel, "provider": provider},
    )
    out = await c.stats.funnel(q)
    if by or bucket:
        return out
    return out | await c.stats.current()
