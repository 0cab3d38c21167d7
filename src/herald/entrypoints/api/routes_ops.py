"""Health, readiness, metrics, stats, tracking events and dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from herald.bootstrap import Container
from herald.domain.errors import Conflict, HeraldError, NotFound
from herald.domain.models import DeliveryStatus
from herald.entrypoints.api.deps import Caller, ContainerDep, require
from herald.entrypoints.api.problems import problem
from herald.entrypoints.api.schemas import ReplayFilterBody, TrackBody, epoch
from herald.entrypoints.api.views import dead_letter_view, delivery_view
from herald.entrypoints.children import WorkerChildren
from herald.ports import DeadLetterFilter

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(c: ContainerDep, request: Request) -> dict[str, Any] | Response:
    try:
        await c.store.ping()
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
async def metrics(c: ContainerDep) -> Response:
    body = await c.metrics.render(
        c.store, c.broker_status(), now=c.clock.now(), circuits=_circuits(c), held=c.delivery.unhealthy
    )
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


_TRACK = {
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "opened": DeliveryStatus.READ,
    "clicked": DeliveryStatus.READ,
}


@router.post("/v1/deliveries/{delivery_id}/events")
async def track(
    delivery_id: str, body: TrackBody, c: ContainerDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    if body.event in ("opened", "clicked"):  # engagement: recorded, counted, moves it to read
        found = await c.store.get_delivery(delivery_id)
        if found is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        done = await c.tracker.engage(found, body.event, source="client", url=body.url)
        return delivery_view(done.delivery if done is not None else found)
    d = await c.store.mark_delivery(delivery_id, _TRACK[body.event], now=c.clock.now())
    return delivery_view(d)


@router.get("/v1/dead-letters")
async def dead_letters(
    c: ContainerDep,
    who: Annotated[Caller, require("read")],
    channel: str | None = None,
    provider: str | None = None,
    reason: str | None = None,
    code: Annotated[str | None, Query(max_length=64, description="the last attempt's code")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Dead deliveries, newest first, each with its attempts and ``last_error``
    (provider, code, detail); filter by channel, provider, reason or the last error's code."""
    items = await c.store.list_dead_letters(
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
    delivery_id: str, c: ContainerDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    replayed = await c.store.replay_dead_letters([delivery_id], now=c.clock.now())
    if not replayed:
        d = await c.store.get_delivery(delivery_id)
        if d is None:
            raise NotFound(f"delivery {delivery_id} does not exist")
        raise Conflict(f"delivery {delivery_id} is {d.status.value}, not in the dead-letter queue")
    for d in replayed:
        c.queue.wake(d.channel)
    return {"replayed": 1, "delivery": delivery_view(replayed[0])}


@router.post("/v1/dead-letters/replay")
async def replay_many(
    body: ReplayFilterBody, c: ContainerDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    items = await c.store.list_dead_letters(
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
    replayed = await c.store.replay_dead_letters([d.id for d in items], now=c.clock.now())
    for ch in {d.channel for d in replayed}:
        c.queue.wake(ch)
    return {"replayed": len(replayed), "ids": [d.id for d in replayed]}
