"""Events and their routing rules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from fastapi.responses import JSONResponse

from herald.domain.rules import Rule
from herald.entrypoints.api.deps import Caller, ContainerDep, ServicesDep, require
from herald.entrypoints.api.routes_notifications import merge_idempotency_key
from herald.services.events import event_view

router = APIRouter(tags=["events"])


def rule_view(rule: Rule) -> dict[str, Any]:
    return {"event_type": rule.event_type, "source": rule.source, **rule.as_json()}


@router.post("/v1/events", status_code=202)
async def post_event(
    c: ContainerDep,
    who: Annotated[Caller, require("send")],
    payload: Annotated[Any, Body()],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JSONResponse:
    body_key = payload.get("idempotency_key") if isinstance(payload, dict) else None
    merge_idempotency_key(idempotency_key, body_key if isinstance(body_key, str) else None)
    result = await c.events.ingest(
        payload,
        source="http",
        scope=who.scope_id,
        idempotency_key=idempotency_key,
        api_key_id=who.api_key.id if who.api_key else None,
    )
    return JSONResponse(result.body, status_code=result.status_code)


@router.get("/v1/events/{event_id}")
async def get_event(event_id: str, s: ServicesDep, who: Annotated[Caller, require("read")]) -> dict[str, Any]:
    record = await s.notifications.event(event_id)
    return event_view(record) | {"body": record.body}


@router.put("/v1/rules/{event_type}")
async def put_rule(
    event_type: str,
    s: ServicesDep,
    who: Annotated[Caller, require("admin")],
    payload: Annotated[Any, Body()],
) -> dict[str, Any]:
    return rule_view(await s.routing.save_rule(event_type, payload))


@router.get("/v1/rules")
async def list_rules(s: ServicesDep, who: Annotated[Caller, require("read")]) -> dict[str, Any]:
    return {"items": [rule_view(r) for r in await s.routing.rules()]}


@router.get("/v1/rules/{event_type}")
async def get_rule(
    event_type: str, s: ServicesDep, who: Annotated[Caller, require("read")]
) -> dict[str, Any]:
    return rule_view(await s.routing.require_rule(event_type))


@router.delete("/v1/rules/{event_type}", status_code=204)
async def delete_rule(event_type: str, s: ServicesDep, who: Annotated[Caller, require("admin")]) -> Response:
    await s.routing.delete_rule(event_type)
    return Response(status_code=204)
