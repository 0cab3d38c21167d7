"""Health, readiness, metrics, stats, tracking events and dead letters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from herald.bootstrap import Container
from herald.domain.errors import HeraldError
from herald.domain.models import DeliveryStatus
from herald.entrypoints.api.deps import Caller, ContainerDep, ServicesDep, require
from herald.entrypoints.api.problems import problem
from herald.entrypoints.api.schemas import IsoDatetime, ReplayFilterBody, TrackBody, epoch
from herald.entrypoints.api.views import dead_letter_view, delivery_view
from herald.entrypoints.children import WorkerChildren
from herald.ports import DeadLetterFilter

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(c: ContainerDep, s: ServicesDep, request: Request) -> dict[str, Any] | Response:
    try:
        await s.stats.ping()
    except HeraldError as exc:
        return problem(503, "Not ready", f"database: {exc.detail}")
    try:
        await c.cache.ping()
    except HeraldError as exc:
        return problem(503, "Not ready", f"cache: {exc.detail}")
    ready: dict[str, Any] = {"status": "ready", "database": "ok", "cache": "ok"}
    kafka = c.broker_status()
    if kafka:  # this process's Kafka consumers: state and lag (issue 21)
        ready["kafka"] = kafka
    children: WorkerChildren | None = getattr(request.app.state, "children", None)
    if children is None:
        return ready | {"unhealthy_providers": c.delivery.unhealthy}
    # Sends run in `herald serve`'s children: their provider health and whether they are up.
    return ready | {
        "unhealthy_providers": c.delivery.unhealthy | children.unhealthy(),
        "worker_processes": children.describe(),
    }


def _circuits(c: Container) -> list[tuple[str, str, str]]:
    """(channel, provider, breaker state) of every provider with a circuit breaker here."""
    out: list[tuple[str, str, str]] = []
    for channel, pool in c.delivery.pools.items():
        for provider in pool.providers:
            states = getattr(provider, "states", None)  # FailoverProvider (providers/composite.py)
            if callable(states):
                out.extend((channel, name, state) for name, state in states().items())
    return out


@router.get("/metrics")
async def metrics(c: ContainerDep, s: ServicesDep) -> Response:
    body = await s.metrics(circuits=_circuits(c), held=c.delivery.unhealthy)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


_TRACK = {
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "opened": DeliveryStatus.READ,
    "clicked": DeliveryStatus.READ,
}


@router.post("/v1/deliveries/{delivery_id}/events")
async def track(
    delivery_id: str,
    body: TrackBody,
    c: ContainerDep,
    s: ServicesDep,
    who: Annotated[Caller, require("send")],
) -> dict[str, Any]:
    if body.event in ("opened", "clicked"):  # engagement: recorded, counted, moves it to read
        found = await s.notifications.delivery(delivery_id)
        done = await c.tracker.engage(found, body.event, source="client", url=body.url)
        return delivery_view(done.delivery if done is not None else found)
    return delivery_view(await s.notifications.mark(delivery_id, _TRACK[body.event]))


@router.get("/v1/dead-letters")
async def dead_letters(
    s: ServicesDep,
    who: Annotated[Caller, require("read")],
    channel: str | None = None,
    provider: str | None = None,
    reason: str | None = None,
    code: Annotated[str | None, Query(max_length=64, description="the last attempt's code")] = None,
    since: IsoDatetime | None = None,
    until: IsoDatetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Dead deliveries, newest first, each with its attempts and ``last_error``
    (provider, code, detail); filter by channel, provider, reason or the last error's code."""
    items = await s.dead_letters.find(
        DeadLetterFilter(
            channel=channel,
            provider=provider,
            reason=reason,
            code=code,
            since=epoch(since),
            until=epoch(until),
            cursor=cursor,
            limit=limit,
        )
    )
    return {
        "items": [dead_letter_view(d) for d in items],
        "next_cursor": items[-1].id if len(items) == limit else None,
    }


@router.post("/v1/dead-letters/{delivery_id}/replay")
async def replay_one(
    delivery_id: str, s: ServicesDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    return {"replayed": 1, "delivery": delivery_view(await s.dead_letters.replay_one(delivery_id))}


@router.post("/v1/dead-letters/replay")
async def replay_many(
    body: ReplayFilterBody, s: ServicesDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    replayed = await s.dead_letters.replay_matching(
        DeadLetterFilter(
            channel=body.channel,
            provider=body.provider,
            reason=body.reason,
            code=body.code,
            since=epoch(body.since),
            until=epoch(body.until),
            limit=body.limit,
        )
    )
    return {"replayed": len(replayed), "ids": [d.id for d in replayed]}
