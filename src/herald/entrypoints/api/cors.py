"""CORS for the end-user endpoints only (``[server] cors_origins``), as pure ASGI middleware.

A web app on another origin embeds the inbox widget: its browser calls the inbox, the stream,
the preferences and the other user-token endpoints. Those paths answer preflights for the
configured origins, and their responses carry ``Access-Control-Allow-Origin`` when the request
is authenticated by a *user token* (or by nothing yet). Everything else, and any request that
carries an API key, never answers a browser origin: an API key has no business in a browser,
and a page that got hold of one must not be able to use it cross-origin.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Path patterns a browser may reach, with the methods each allows.
_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^/v1/users/[^/]+/inbox(/stream|/read-all|/[^/]+/read)?$"), "GET, POST"),
    (re.compile(r"^/v1/users/[^/]+/preferences$"), "GET, PUT"),
    (re.compile(r"^/v1/users/[^/]+/devices(/[^/]+)?$"), "POST, DELETE"),
    (re.compile(r"^/v1/users/[^/]+$"), "GET"),
    (re.compile(r"^/widget/[^/]+$"), "GET"),
)
_ALLOW_HEADERS = b"authorization, content-type, last-event-id"
_MAX_AGE = b"600"


def _methods(path: str) -> str | None:
    for pattern, methods in _ROUTES:
        if pattern.match(path):
            return methods
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


class UserCors:
    """``origins()`` gives ``[server] cors_origins`` (read once the configuration is loaded)."""

    def __init__(self, app: ASGIApp, origins: Callable[[], list[str] | None]) -> None:
        self.app = app
        self._source = origins
        self._origins: set[bytes] | None = None
        self.any_origin = False

    @property
    def origins(self) -> set[bytes]:
        if self._origins is None:
            configured = self._source()
            if configured is None:  # not started yet
                return set()
            self.any_origin = "*" in configured
            self._origins = {o.encode() for o in configured if o != "*"}
        return self._origins

    def _allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None or not (self.origins or self.any_origin):
            await self.app(scope, receive, send)
            return
        methods = _methods(scope["path"])
        preflight = scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method")
        if methods is None:
            await self.app(scope, receive, send)  # never a browser's: no CORS, a preflight is 405
            return
        if preflight:
            await self._preflight(origin, methods, preflight, send)
            return
        auth = (_header(scope, b"authorization") or b"").strip()
        api_key = bool(auth) and not auth.lower().startswith(b"bearer ut_")
        if api_key or not self._allowed(origin):
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"access-control-allow-origin", origin))
                headers.append((b"vary", b"Origin"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, origin: bytes, methods: str, requested: bytes, send: Send) -> None:
        allowed_method = requested.decode("latin-1").upper() in {m.strip() for m in methods.split(",")}
        if not self._allowed(origin) or not allowed_method:
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"vary", b"Origin")],
                }
            )
            await send({"type": "http.response.body", "body": b"origin or method not allowed"})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", origin),
                    (b"access-control-allow-methods", methods.encode() + b", OPTIONS"),
                    (b"access-control-allow-headers", _ALLOW_HEADERS),
                    (b"access-control-max-age", _MAX_AGE),
                    (b"vary", b"Origin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
