"""Pure ASGI middleware: every JSON request body is read strictly before a route sees it.

FastAPI parses bodies with Python's ``json``, which reads ``NaN``, keeps the last of two equal
keys, lets a lone surrogate through and nests as deep as the recursion limit; what it lets in
then fails where herald stores or renders it (a 500, or a stall). This reads the body once with
:func:`herald.domain.strict_json.loads` and answers 400 problem+json naming the offence, or
hands the same bytes on. It sits inside :class:`~herald.entrypoints.api.limits.BodyLimit`, so
the body it buffers is bounded.

Skipped: requests without a body, bodies that are not JSON by their content type (the route
answers those), and provider callbacks (``/v1/webhooks/…``), whose raw bytes are verified and
parsed by the provider's own code.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald.domain.errors import MalformedRequest
from herald.domain.strict_json import loads

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SKIP_PREFIXES = ("/v1/webhooks/",)


def is_json_type(content_type: bytes | None) -> bool:
    """As FastAPI decides: no content type, ``application/json`` or any ``…+json``."""
    if content_type is None:
        return True
    main = content_type.split(b";", 1)[0].strip().lower()
    return main == b"application/json" or (main.startswith(b"application/") and main.endswith(b"+json"))


async def problem_400(send: Send, exc: MalformedRequest, path: str) -> None:
    body = {"type": "about:blank", "title": exc.title, "status": exc.status, "detail": exc.detail}
    body["instance"] = path
    if exc.field:
        body["field"] = exc.field
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [(b"content-type", b"application/problem+json")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


class StrictJsonBody:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or scope["path"].startswith(_SKIP_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        ctype = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value
                break
        if not is_json_type(ctype):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw.strip():
            try:
                loads(raw)
            except MalformedRequest as exc:
                await problem_400(send, exc, scope["path"])
                return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)
