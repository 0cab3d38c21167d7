"""Sending and tracking notifications."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from herald.bootstrap import Container
from herald.domain.errors import HeraldError, NotFound, ValidationError
from herald.domain.models import Channel, DeliveryStatus, Notification, NotificationStatus
from herald.entrypoints.api.deps import Caller, ContainerDep, ServicesDep, require
from herald.entrypoints.api.fast_json import FastJSONResponse, FastJSONRoute
from herald.entrypoints.api.problems import PROBLEM, field_path
from herald.entrypoints.api.schemas import BatchBody, IsoDatetime, SendBody, epoch
from herald.entrypoints.api.views import (
    MAX_DELIVERIES_PAGE,
    ShownStatus,
    accepted_view,
    notification_page,
    notification_status,
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
            prefix = f"notifications[{i}]"
            try:
                item = _send_adapter.validate_python(raw)
                n = await c.accept.prepare(
                    to_request(item), api_key_id=who.scope_id, field_prefix=prefix + ".", memo=memo
                )
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                loc = field_path(err["loc"])
                field = f"{prefix}.{loc}" if loc else prefix
                results.append(item_problem(i, 422, "Invalid request", f"{field}: {err['msg']}", field))
                continue
            except HeraldError as exc:
                results.append(item_problem(i, exc.status, exc.title, exc.detail, exc.field))
                continue
            notes.append(n)
            results.append({"index": i, "code": 202, **accepted_view(n)})
        accepted = sum(1 for r in results if r["code"] == 202)
        summary = {"accepted": accepted, "rejected": len(results) - accepted, "results": results}
        if accepted:
            return notes, Accepted(202, summary)
        # Nothing accepted: the answer is an error, in the API's one error form, with every item.
        detail = f"none of the {len(results)} notifications was accepted; each result says why"
        return notes, Accepted(
            422,
            {"type": "about:blank", "title": "Invalid request", "status": 422, "detail": detail}
            | {"instance": "/v1/notifications/batch"}
            | summary,
        )

    # Only an idempotency key needs the request's hash (1,000 items take a while to dump).
    payload = body.model_dump(mode="json", exclude={"idempotency_key"}) if key is not None else None
    result = await c.accept.idempotent(who.scope_id, key, payload, build)
    return FastJSONResponse(
        result.body, status_code=result.status_code, media_type=PROBLEM if result.status_code >= 400 else None
    )


def item_problem(index: int, status: int, title: str, detail: str, field: str | None) -> dict[str, Any]:
    """One refused item of a batch: problem+json members, with its index (and the older
    ``code`` and ``error`` names of the same facts)."""
    out: dict[str, Any] = {"index": index, "type": "about:blank", "title": title, "status": status}
    out |= {"detail": detail, "code": status, "error": detail}
    if field:
        out["field"] = field
    return out


@router.get("/{notification_id}")
async def get_notification(
    notification_id: str,
    s: ServicesDep,
    who: Annotated[Caller, require("read")],
    deliveries_limit: Annotated[int, Query(ge=1, le=MAX_DELIVERIES_PAGE)] = MAX_DELIVERIES_PAGE,
    deliveries_after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The notification with its deliveries a page at a time (``notification_page``)."""
    page = await s.notifications.page(notification_id, after=deliveries_after, limit=deliveries_limit)
    view = notification_page(page)
    if view is None:
        raise NotFound(f"notification {notification_id} does not exist")
    return view


@router.get("")
async def list_notifications(
    s: ServicesDep,
    who: Annotated[Caller, require("read")],
    user_id: Annotated[str | None, Query(max_length=128)] = None,
    status: ShownStatus | None = None,
    delivery_status: DeliveryStatus | None = None,
    channel: Channel | None = None,
    since: IsoDatetime | None = None,
    until: IsoDatetime | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Newest first. ``status`` is the status each item shows (as the detail does);
    ``delivery_status``: with at least one delivery in that status."""
    items, open_ids = await s.notifications.find(
        NotificationFilter(
            user_id=user_id,
            status=status,
            delivery_status=None if delivery_status is None else delivery_status.value,
            channel=None if channel is None else channel.value,
            since=epoch(since),
            until=epoch(until),
            cursor=cursor,
            limit=limit,
        )
    )
    next_cursor = items[-1].id if len(items) == limit else None
    return {
        "items": [notification_view(n, in_progress=n.id in open_ids) for n in items],
        "next_cursor": next_cursor,
    }


@router.post("/{notification_id}/cancel")
async def cancel(
    notification_id: str, s: ServicesDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    """Cancel what has not been sent. The answer says what happened: whether routing was
    stopped (nothing more will be made for it: a topic's fan-out, recipients not yet routed),
    how many deliveries were cancelled, how many were already sent or finished."""
    done = await s.notifications.cancel(notification_id)
    before, after, cancelled, remaining = done.before, done.after, done.cancelled, done.unchanged
    stopped = done.routing_stopped
    parts: list[str] = []
    if stopped:
        parts.append("routing stopped: no further deliveries will be made")
    elif before.status == NotificationStatus.CANCELLED:
        parts.append("the notification was already cancelled")
    if not parts and cancelled == 0 and remaining:
        parts.append("nothing was cancelled: every delivery was already sent or finished")
    else:
        if cancelled or not parts:
            parts.append(f"{cancelled} cancelled")
        if remaining:
            parts.append(f"{remaining} were already sent or finished and are unchanged")
    if after is None:
        status = "cancelled"
    elif after.status == NotificationStatus.ROUTED:
        status = notification_status(after, done.counts_after)
    else:
        status = after.status.value
    return {
        "id": notification_id,
        "status": status,
        "routing_stopped": stopped,
        "cancelled": cancelled,
        "unchanged": remaining,
        "detail": "; ".join(parts),
    }
