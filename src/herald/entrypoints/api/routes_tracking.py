"""Email open pixel and click redirect (public: the signed token is the authority), and the
engagement recorded on a delivery."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from herald.domain.errors import NotFound
from herald.entrypoints.api.deps import Caller, ContainerDep, ServicesDep, require
from herald.entrypoints.api.views import iso

router = APIRouter(tags=["tracking"])

# A 1x1 transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}
MAX_TOKEN = 512


@router.get("/t/o/{token}.gif", include_in_schema=True, response_class=Response)
async def open_pixel(token: str, request: Request, c: ContainerDep) -> Response:
    """The open pixel: always the image (an invalid token records nothing)."""
    if len(token) <= MAX_TOKEN:
        await c.tracker.open(token, user_agent=request.headers.get("user-agent"))
    return Response(PIXEL, media_type="image/gif", headers=_NO_STORE)


@router.get("/t/c/{token}", response_class=RedirectResponse, status_code=302)
async def click(token: str, request: Request, c: ContainerDep) -> Response:
    """A tracked link: recorded, then redirected to the link of the message the token names.
    A token that is not herald's, or names a link the message did not have, is a 404."""
    if len(token) > MAX_TOKEN:
        raise NotFound("unknown link")
    url = await c.tracker.click(token, user_agent=request.headers.get("user-agent"))
    headers = {**_NO_STORE, "Referrer-Policy": "no-referrer"}
    return RedirectResponse(url, status_code=302, headers=headers)


@router.get("/v1/deliveries/{delivery_id}/engagement")
async def engagement(
    delivery_id: str, s: ServicesDep, who: Annotated[Caller, require("read")]
) -> dict[str, Any]:
    """The delivery's opens and clicks, oldest first; machine ones flagged with why."""
    d, events = await s.notifications.engagement(delivery_id)
    for e in events:
        e["at"] = iso(e["at"])  # type: ignore[arg-type]  # floats from the store
        e["last_at"] = iso(e["last_at"])  # type: ignore[arg-type]
    return {"delivery_id": d.id, "status": d.status.value, "events": events}
