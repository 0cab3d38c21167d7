"""Sending and tracking notifications."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from herald.bootstrap import Container
from herald.domain.errors import HeraldError, NotFound, ValidationError
from herald.domain.models import Notification
from herald.entrypoints.api.deps import Caller, ContainerDep, require
from herald.entrypoints.api.fast_json import FastJSONResponse, FastJSONRoute
from herald.entrypoints.api.schemas import BatchBody, SendBody, epoch
from herald.entrypoints.api.views import (
    MAX_DELIVERIES_PAGE,
    accepted_view,
    notification_page,
    notification_view,
)
from herald.ports import NotificationFilter
from herald.services.accept import Accepted, PrepareMemo, SendRequest

router = APIRouter(prefix="/v1/notifications", tags=["notifications"], route_class=FastJSONRoute)
_send_adapter = pydantic.TypeAdapter(SendBody)


def to_request(body: SendBody) -> SendRequest:
    return SendRequest(
        to=body.to,
        template=body.template,
        content=body.content,
        data=body.data,
        channels=body.channels,
        category=body.category,
        priority=body.priority,
        send_at=epoch(body.send_at),
        expires_at=epoch(body.expires_at),
        dedup_key=body.dedup_key,
        fallback=body.fallback,
    )


def merge_idempotency_key(header: str | None, body_key: str | None) -> str | None:
    if header is not None and body_key is not None and header != body_key:
        raise ValidationError(
            "Idempotency-Key header and idempotency_key field differ", field="idempotency_key"
        )
    return header if header is not None else body_key


async def accept_send(c: Container, who: Caller, body: SendBody, idempotency_key: str | None) -> Accepted:
    """The whole of ``POST /v1/notifications`` once authenticated and parsed (also run by
    :mod:`herald.entrypoints.api.fast_send`)."""
    key = merge_idempotency_key(idempotency_key, body.idempotency_key)
    # Only an idempotency key needs the request's hash (dumping a body is not free).
    payload = body.model_dump(mode="json", exclude={"idempotency_key"}) if key is not None else None

    async def build() -> tuple[list[Notification], Accepted]:
        n = await c.accept.prepare(to_request(body), api_key_id=who.scope_id)
        return [n], Accepted(202, accepted_view(n))

    return await c.accept.idempotent(who.scope_id, key, payload, build)


@router.post("", status_code=202)
async def send(
    body: SendBody,
    c: ContainerDep,
    who: Annotated[Caller, require("send")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JSONResponse:
    result = await accept_send(c, who, body, idempotency_key)
    return FastJSONResponse(result.body, status_code=result.status_code)


@router.post("/batch", status_code=202)
async def send_batch(
    body: BatchBody,
    c: ContainerDep,
    who: Annotated[Caller, require("send")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JSONResponse:
    key = merge_idempotency_key(idempotency_key, body.idempotency_key)

    async def build() -> tuple[list[Notification], Accepted]:
        notes: list[Notification] = []
        results: list[dict[str, Any]] = []
        memo = PrepareMemo()
        # One lookup for every stored user the batch names, instead of one per item.
        named: list[str] = []
        for raw in body.notifications:
            to = raw.get("to")
            for item in to if isinstance(to, list) else [to]:
                if isinstance(item, str) and 0 < len(item) <= 128:
                    named.append(item)
        if named:
            memo.known_users.update(await c.lookups.existing_users(list(dict.fromkeys(named))))
        for i, raw in enumerate(body.notifications):
            try:
                item = _send_adapter.validate_python(raw)
                n = await c.accept.prepare(
                    to_request(item), api_key_id=who.scope_id, field_prefix=f"notifications[{i}].", memo=memo
                )
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                results.append(
                    {"index": i, "code": 422, "error": f"{loc}: {err['msg']}" if loc else err["msg"]}
                )
                continue
            except HeraldError as exc:
                results.append({"index": i, "code": exc.status, "error": exc.detail, "field": exc.field})
                continue
            notes.append(n)
            results.append({"index": i, "code": 202, **accepted_view(n)})
        accepted = sum(1 for r in results if r["code"] == 202)
        return notes, Accepted(
            202 if accepted else 422,
            {
                "accepted": accepted,
                "rejected": len(results) - accepted,
                "results": results,
            },
        )

    # Only an idempotency key needs the request's hash (1,000 items take a while to dump).
    payload = body.model_dump(mode="json", exclude={"idempotency_key"}) if key is not None else None
    result = await c.accept.idempotent(who.scope_id, key, payload, build)
    return FastJSONResponse(result.body, status_code=result.status_code)


@router.get("/{notification_id}")
async def get_notification(
    notification_id: str,
    c: ContainerDep,
    who: Annotated[Caller, require("read")],
    deliveries_limit: Annotated[int, Query(ge=1, le=MAX_DELIVERIES_PAGE)] = MAX_DELIVERIES_PAGE,
    deliveries_after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The notification with its deliveries a page at a time (``notification_page``)."""
    view = await notification_page(c.store, notification_id, after=deliveries_after, limit=deliveries_limit)
    if view is None:
        raise NotFound(f"notification {notification_id} does not exist")
    return view


@router.get("")
async def list_notifications(
    c: ContainerDep,
    who: Annotated[Caller, require("read")],
    user_id: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    items = await c.store.list_notifications(
        NotificationFilter(
            user_id=user_id,
            status=status,
            channel=channel,
            since=epoch(since),
            until=epoch(until),
            cursor=cursor,
            limit=limit,
        )
    )
    next_cursor = items[-1].id if len(items) == limit else None
    return {"items": [notification_view(n) for n in items], "next_cursor": next_cursor}


@router.post("/{notification_id}/cancel")
async def cancel(
    notification_id: str, c: ContainerDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    cancelled, remaining = await c.store.cancel_notification(notification_id, now=c.clock.now())
    if cancelled == 0 and remaining > 0:
        detail = "nothing was cancelled: every delivery was already sent or finished"
    elif remaining > 0:
        detail = f"{cancelled} cancelled; {remaining} were already sent or finished and are unchanged"
    else:
        detail = f"{cancelled} cancelled"
    return {"id": notification_id, "cancelled": cancelled, "unchanged": remaining, "detail": detail}
