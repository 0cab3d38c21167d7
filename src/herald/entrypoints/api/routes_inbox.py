"""The in-app inbox: list with unread count, mark read, read-all, and a live stream (SSE)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from herald.domain.models import DeliveryStatus
from herald.entrypoints.api.deps import CallerDep, ContainerDep, check_user_access
from herald.entrypoints.api.views import inbox_item

router = APIRouter(prefix="/v1/users/{user_id}/inbox", tags=["inbox"])


@router.get("")
async def list_inbox(
    user_id: str,
    c: ContainerDep,
    who: CallerDep,
    unread_only: bool = False,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    check_user_access(who, user_id)
    items, unread = await c.store.list_inbox(user_id, unread_only=unread_only, cursor=cursor, limit=limit)
    return {
        "items": [inbox_item(d) for d in items],
        "unread_count": unread,
        "next_cursor": items[-1].id if len(items) == limit else None,
    }


@router.post("/read-all")
async def read_all(user_id: str, c: ContainerDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    changed = await c.store.mark_all_read(user_id, now=c.clock.now())
    return {"marked_read": changed, "unread_count": 0}


@router.post("/{delivery_id}/read")
async def mark_read(user_id: str, delivery_id: str, c: ContainerDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    d = await c.store.mark_delivery(delivery_id, DeliveryStatus.READ, now=c.clock.now(), user_id=user_id)
    _, unread = await c.store.list_inbox(user_id, unread_only=True, cursor=None, limit=1)
    return {"item": inbox_item(d), "unread_count": unread}


@router.get("/stream")
async def stream(user_id: str, request: Request, c: ContainerDep, who: CallerDep) -> StreamingResponse:
    check_user_access(who, user_id)
    queue = c.hub.subscribe(user_id)

    async def events() -> AsyncIterator[bytes]:
        try:
            _, unread = await c.store.list_inbox(user_id, unread_only=True, cursor=None, limit=1)
            yield b"event: unread\ndata: " + orjson.dumps({"unread_count": unread}) + b"\n\n"
            while not await request.is_disconnected():
                try:
                    item = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield b"event: item\ndata: " + orjson.dumps(item) + b"\n\n"
        finally:
            c.hub.unsubscribe(user_id, queue)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
