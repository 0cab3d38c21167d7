"""``POST /v1/notifications`` as plain ASGI, in front of the FastAPI stack.

Profiled at 500 single sends/s, the framework's per-request machinery (a dozen middleware
layers, dependency solving, request and response wrappers) took about three times the CPU of
the accept itself, on a process that also routes and delivers. The busiest endpoint therefore
skips it when the request is the plain success shape:

* read the body (within ``max_body_bytes``), parse it with orjson, validate it with the same
  pydantic model (:class:`SendBody`);
* authenticate with the same cached key lookup as :func:`deps.caller` and require ``send``;
* run the route's own code (:func:`routes_notifications.accept_send`) and answer with the
  same ``JSONResponse``; a :class:`HeraldError` from the service gets the app's problem+json.

Everything else (no or unknown key, a user token, a missing scope, a body that is too large,
not JSON or not valid, a content type other than JSON, an over-long ``Idempotency-Key``) is
handed to the FastAPI route with the body replayed, so every such answer is the route's own.
Nothing has been written when it is handed over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from herald.bootstrap import Container
from herald.domain import strict_json, urgency
from herald.domain.errors import HeraldError, MalformedRequest
from herald.entrypoints.api.deps import Caller, hash_key
from herald.entrypoints.api.fast_json import FastJSONResponse
from herald.entrypoints.api.problems import herald_problem, unexpected_problem
from herald.entrypoints.api.routes_notifications import accept_send
from herald.entrypoints.api.schemas import SendBody

SEND_PATH = "/v1/notifications"
_send_body = pydantic.TypeAdapter(SendBody)
_JSON = b"application/json"

ASGICall = Callable[[Scope, Receive, Send], Awaitable[None]]


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back the messages already read."""
    pending = list(messages)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return again


class FastSend:
    def __init__(self, app: FastAPI, full: ASGICall, max_body_bytes: int) -> None:
        self.app = app
        self.full = full  # the FastAPI stack, for everything this does not answer itself
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = ctype = idem = None
        for name, value in scope["headers"]:
            if name == b"authorization" and auth is None:
                auth = value
            elif name == b"content-type" and ctype is None:
                ctype = value
            elif name == b"idempotency-key" and idem is None:
                idem = value
            elif name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        await self.full(scope, receive, send)  # the body limit answers 413
                        return
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.full(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                read: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                await self.full(scope, _replay([read], receive), send)
                return
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        whole: Message = {"type": "http.request", "body": raw, "more_body": False}
        body = self._parse(raw, ctype, idem)
        if body is None:
            await self.full(scope, _replay([whole], receive), send)
            return
        urgency.mark_urgent()  # as deps.container does for every request
        container: Container = self.app.state.container
        path = scope["path"]
        response: JSONResponse
        try:
            who = await self._caller(container, auth)
            if who is None:
                await self.full(scope, _replay([whole], receive), send)
                return
            result = await accept_send(container, who, body, None if idem is None else idem.decode("latin-1"))
            response = FastJSONResponse(result.body, status_code=result.status_code)
        except HeraldError as exc:
            response = herald_problem(exc, path)
        except Exception:
            response = unexpected_problem(path)
        await response(scope, receive, send)

    def _parse(self, raw: bytes, ctype: bytes | None, idem: bytes | None) -> SendBody | None:
        if ctype is not None and ctype.split(b";", 1)[0].strip().lower() != _JSON:
            return None
        if idem is not None and len(idem) > 255:
            return None
        try:
            data: Any = strict_json.loads(raw)  # refused: the full stack answers the 400
            return _send_body.validate_python(data)
        except (MalformedRequest, pydantic.ValidationError):
            return None

    async def _caller(self, c: Container, auth: bytes | None) -> Caller | None:
        if auth is None:
            return None
        scheme, _, token = auth.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token.startswith("ut_"):
            return None
        key = await c.lookups.api_key(hash_key(token))
        if key is None:
            return None
        who = Caller(api_key=key)
        return who if who.may("send") else None


class HeraldApi(FastAPI):
    """The FastAPI app with ``POST /v1/notifications`` answered by :class:`FastSend`."""

    fast_send: FastSend | None = None

    def enable_fast_send(self, max_body_bytes: int) -> None:
        self.fast_send = FastSend(self, super().__call__, max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        counted = RequestCount(scope, send)
        try:
            if self.fast_send is not None and scope["path"] == SEND_PATH and scope["method"] == "POST":
                await self.fast_send(scope, receive, counted.send)
            else:
                await super().__call__(scope, receive, counted.send)
        finally:
            container: Container | None = getattr(self.state, "container", None)
            if container is not None:
                container.metrics.request(scope["method"], counted.route(), counted.status)


class RequestCount:
    """The status a request was answered with, and the route template it matched.

    FastAPI's router puts the matched route in the scope; the fast send path is its own
    route. A request that matched none (a 404 scan) counts under one label, never its path.
    """

    __slots__ = ("_send", "scope", "status")

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope = scope
        self._send = send
        self.status = 500  # an exception before any answer: the server failed it

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)

    def route(self) -> str:
        if self.scope["path"] == SEND_PATH and self.scope["method"] == "POST":
            return SEND_PATH
        route = self.scope.get("route")
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else "<unmatched>"
