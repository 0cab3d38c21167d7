"""JSON in and out with orjson on the busiest routes (``/v1/notifications``).

Profiled in the serve process during the drain (issue 23), the standard library's JSON decoder
(the batch request's body, 1,000 items) and encoder (its answer, 1,000 results) were ~6 % of
the process's samples; orjson does the same work several times faster. Same bytes on the wire
as Starlette's compact ``JSONResponse`` for these bodies (strings, numbers, lists, objects).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class FastJSONRoute(APIRoute):
    """A route whose JSON body is parsed by orjson (invalid JSON: the same 422 as before, since
    ``orjson.JSONDecodeError`` is a ``json.JSONDecodeError``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_OrjsonRequest(request.scope, request.receive, request._send))

        return route
