"""The in-app inbox: list with unread count, mark read, read-all, and a live stream (SSE)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from herald.domain.errors import AuthenticationError, ValidationError
from herald.entrypoints.api.deps import (
    Caller,
    CallerDep,
    ContainerDep,
    ServicesDep,
    caller,
    check_user_access,
)
from herald.entrypoints.api.views import inbox_item

router = APIRouter(prefix="/v1/users/{user_id}/inbox", tags=["inbox"])


@router.get("")
async def list_inbox(
    user_id: str,
    c: ContainerDep,
    s: ServicesDep,
    who: CallerDep,
    unread_only: bool = False,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    check_user_access(who, user_id)
    head = await c.hub.feed.head(user_id)  # before the listing: what arrives after it, the stream replays
    items, unread = await s.notifications.inbox(user_id, unread_only=unread_only, cursor=cursor, limit=limit)
    return {
        "items": [inbox_item(d) for d in items],
        "unread_count": unread,
        "next_cursor": items[-1].id if len(items) == limit else None,
        "last_event_id": str(head),  # open the stream with ?last_event_id= this: nothing missed
    }


@router.post("/read-all")
async def read_all(user_id: str, c: ContainerDep, s: ServicesDep, who: CallerDep) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    changed = await s.notifications.read_all(user_id)
    c.hub.changed(user_id)  # the user's other tabs update their badge
    return {"marked_read": changed, "unread_count": 0}


@router.post("/{delivery_id}/read")
async def mark_read(
    user_id: str, delivery_id: str, c: ContainerDep, s: ServicesDep, who: CallerDep
) -> dict[str, Any]:
    check_user_access(who, user_id, "send")
    d, unread = await s.notifications.read(user_id, delivery_id)
    c.hub.changed(user_id)
    return {"item": inbox_item(d), "unread_count": unread}


async def stream_caller(request: Request, c: ContainerDep, token: str | None = None) -> Caller:
    """The header, as everywhere; or ``?token=`` with a user token (``EventSource`` sends no
    headers). An API key is never accepted in a URL: URLs end up in logs and histories."""
    if request.headers.get("authorization"):
        return await caller(request, c)
    if not token:
        raise AuthenticationError("missing Authorization: Bearer <token>, or ?token=<user token>")
    if not token.startswith("ut_"):
        raise AuthenticationError(
            "?token= takes a user token only; send an API key in the Authorization header"
        )
    return Caller(user_id=c.user_tokens.verify(token, c.clock.now()))


def _last_event_id(header: str | None, query: str | None) -> int | None:
    """``Last-Event-ID`` (what the browser sends when it reconnects) or, for a first connect,
    ``?last_event_id=`` (what the inbox listing said). Event ids are feed numbers."""
    for field, raw in (("Last-Event-ID", header), ("last_event_id", query)):
        if raw is None or raw.strip() == "":
            continue
        value = raw.strip()
        if not value.isdigit() or len(value) > 18:
            raise ValidationError(f"{field} must be an event id this stream sent (a number)", field=field)
        return int(value)
    return None


def _event(kind: bytes, event_id: int, data: dict[str, Any], extra: bytes = b"") -> bytes:
    head = b"event: " + kind + b"\nid: " + str(event_id).encode() + b"\n" + extra
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


_PAGE = 100


class _Stream(StreamingResponse):
    """Unsubscribes however the response ends, even if its body never started."""

    def __init__(
        self, body: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict[str, str]
    ) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@router.get("/stream")
async def stream(
    user_id: str,
    request: Request,
    c: ContainerDep,
    who: Annotated[Caller, Depends(stream_caller)],
    last_event_id: Annotated[
        str | None, Query(description="resume after this event id (first connect)")
    ] = None,
) -> StreamingResponse:
    """Server-sent events: ``unread`` (the unread count) and ``item`` (a new inbox item), each
    with an ``id:``; a reconnect with ``Last-Event-ID`` replays every item after it."""
    check_user_access(who, user_id)
    resume = _last_event_id(request.headers.get("last-event-id"), last_event_id)
    hub = c.hub
    sub = hub.subscribe(user_id)  # 429 past the per-user bound; 503 while shutting down
    heartbeat = c.settings.server.stream_heartbeat_seconds

    async def events() -> AsyncIterator[bytes]:
        try:
            head = await hub.feed.head(user_id)
            cursor = head if resume is None or resume > head else resume
            sent_unread = -1
            woken = False
            while not sub.closing:
                sub.event.clear()  # before reading: a wake-up during the read is not lost
                fresh, numbers = sub.fresh, [seq for seq, _ in sub.fresh]
                if sent_unread >= 0 and numbers == list(range(cursor + 1, cursor + 1 + len(fresh))) and fresh:
                    sub.fresh = []  # the next items, numbered in this process: no read needed
                    for seq, item in fresh:
                        cursor = seq
                        yield _event(b"item", cursor, item)
                    sent_unread += len(fresh)
                    yield _event(b"unread", cursor, {"unread_count": sent_unread})
                else:
                    while True:
                        entries, unread = await hub.feed.after(user_id, cursor, limit=_PAGE)
                        if sent_unread == -1:  # the first event says the count (and the resume point)
                            # retry: browsers reconnect after 1 s (not their default 3 s)
                            yield _event(b"unread", cursor, {"unread_count": unread}, b"retry: 1000\n")
                            sent_unread = unread
                        for entry in entries:
                            cursor = entry.seq
                            yield _event(b"item", cursor, inbox_item(entry.delivery))
                        if len(entries) < _PAGE:
                            break
                    sub.fresh = [f for f in sub.fresh if f[0] > cursor]
                    if unread != sent_unread or woken:  # woken: a read elsewhere may have set another count
                        yield _event(b"unread", cursor, {"unread_count": unread})
                        sent_unread = unread
                try:
                    await asyncio.wait_for(sub.event.wait(), heartbeat)
                    woken = True
                except TimeoutError:
                    woken = False
                    yield b": heartbeat\n\n"  # keeps proxies from closing; then a look at the feed
        finally:
            hub.unsubscribe(sub)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return _Stream(events(), lambda: hub.unsubscribe(sub), headers)
