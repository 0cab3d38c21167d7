"""Provider status callbacks. The provider's signature is the authentication: a forged or
stale request is refused with 403 and changes nothing (see :mod:`herald.services.callbacks`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from herald.domain.models import CallbackRequest
from herald.entrypoints.api.deps import ContainerDep

router = APIRouter(tags=["webhooks"])


@router.post("/v1/webhooks/{provider}")
async def provider_callback(provider: str, request: Request, c: ContainerDep) -> dict[str, Any]:
    received = CallbackRequest(
        url=str(request.url),
        path=request.url.path,
        query=request.url.query,
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await request.body(),
    )
    return await c.callbacks.receive(provider, received)
