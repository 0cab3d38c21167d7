"""Events and their routing rules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from fastapi.responses import JSONResponse

from herald.domain.errors import NotFound, ValidationError
from herald.domain.rules import Rule, parse_rule
from herald.domain.validation import check_id
from herald.entrypoints.api.deps import Caller, ContainerDep, require
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
async def get_event(
    event_id: str, c: ContainerDep, who: Annotated[Caller, require("read")]
) -> dict[str, Any]:
    record = await c.store.get_event(event_id)
    if record is None:
        raise NotFound(f"event {event_id} does not exist")
    return event_view(record) | {"body": record.body}


@router.put("/v1/rules/{event_type}")
async def put_rule(
    event_type: str,
    c: ContainerDep,
    who: Annotated[Caller, require("admin")],
    payload: Annotated[Any, Body()],
) -> dict[str, Any]:
    check_id(event_type, "event_type")
    rule = parse_rule(event_type, payload, source="api")
    if rule.category is not None:
        c.catalog.category(rule.category)
    template = await c.store.get_template(rule.template)
    if template is None:
        raise ValidationError(f"unknown template {rule.template!r}", field="template")
    missing = [ch for ch in rule.channels if ch not in template.channels]
    if missing:
        raise ValidationError(
            f"template {rule.template!r} has no variant for channels {missing}",
            field="fallback" if rule.fallback else "channels",
        )
    await c.store.put_rule(rule, now=c.clock.now())
    c.events.forget(event_type)
    return rule_view(rule)


@router.get("/v1/rules")
async def list_rules(c: ContainerDep, who: Annotated[Caller, require("read")]) -> dict[str, Any]:
    return {"items": [rule_view(r) for r in await c.store.list_rules()]}


@router.get("/v1/rules/{event_type}")
async def get_rule(
    event_type: str, c: ContainerDep, who: Annotated[Caller, require("read")]
) -> dict[str, Any]:
    rule = await c.store.get_rule(event_type)
    if rule is None:
        raise NotFound(f"no routing rule for event type {event_type!r}")
    return rule_view(rule)


@router.delete("/v1/rules/{event_type}", status_code=204)
async def delete_rule(event_type: str, c: ContainerDep, who: Annotated[Caller, require("admin")]) -> Response:
    if not await c.store.delete_rule(event_type):
        raise NotFound(f"no routing rule for event type {event_type!r}")
    c.events.forget(event_type)
    return Response(status_code=204)
