"""Errors as RFC 9457 problem+json, mapped in one place. No request ever sees a traceback."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald.domain.errors import HeraldError
from herald.domain.models import new_id

log = structlog.get_logger("herald.api")
PROBLEM = "application/problem+json"


def problem(
    status: int, title: str, detail: str, *, instance: str | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_path(loc: Any) -> str:
    """A pydantic error location as a field path: ``to[0].email``."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (("." if out else "") + p)
    return out


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def herald_problem(exc: HeraldError, path: str) -> JSONResponse:
    if exc.status >= 500:
        log.error("api.error", path=path, error=exc.detail)
    return problem(exc.status, exc.title, exc.detail, instance=path, field=exc.field)


def unexpected_problem(path: str) -> JSONResponse:
    """Call from an ``except`` block: the exception is logged as one line (type, message, a
    short stack; never local variables) under an error id that the 500 answer carries."""
    error_id = new_id("err")
    log.error("api.unhandled", path=path, error_id=error_id, exc_info=True)
    return problem(
        500,
        "Internal error",
        f"the server failed to handle this request; it has been logged as {error_id}",
        instance=path,
        error_id=error_id,
    )


class CatchAll:
    """The last resort for an exception no handler took: one log line with an error id and a
    problem+json 500. Starlette's own last resort answers too but then re-raises, and the
    server logs the exception a second time and drops the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            response = unexpected_problem(scope.get("path", ""))
            if not started:
                await response(scope, receive, send)


def install(app: FastAPI) -> None:
    @app.exception_handler(HeraldError)
    async def _herald(request: Request, exc: HeraldError) -> JSONResponse:
        return herald_problem(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        if first.get("type") == "json_invalid" or (
            tuple(first.get("loc", ())) == ("body",) and not _is_json(await request.body())
        ):
            return problem(400, "Malformed request", "the body is not valid JSON", instance=request.url.path)
        field = field_path(first.get("loc", ()))
        detail = f"{field}: {first['msg']}" if field else str(first["msg"])
        return problem(
            422,
            "Invalid request",
            detail,
            instance=request.url.path,
            field=field or None,
            errors=[{"field": field_path(e.get("loc", ())), "message": e.get("msg")} for e in errors[:20]],
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        return problem(
            exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), instance=request.url.path
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_problem(request.url.path)
