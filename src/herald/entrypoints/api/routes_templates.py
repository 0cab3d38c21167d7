"""Templates: versioned, per channel and locale, compiled in the sandbox before they are stored
(services/routing_catalog.py: the console saves them through the same checks)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response

from herald.domain.models import Template
from herald.entrypoints.api.deps import Caller, ServicesDep, require
from herald.entrypoints.api.schemas import RenderBody, TemplateBody
from herald.entrypoints.api.views import template_view

router = APIRouter(prefix="/v1/templates", tags=["templates"])


@router.put("/{name}")
async def put_template(
    name: str, body: TemplateBody, s: ServicesDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    template = Template(
        name=name,
        version=0,
        category=body.category,
        channels=body.channels,
        locales=body.locales,
        default_locale=body.default_locale,
    )
    return template_view(await s.routing.save_template(template, body.sample_data))


@router.get("/{name}")
async def get_template(
    name: str, s: ServicesDep, who: Annotated[Caller, require("read")], version: int | None = None
) -> dict[str, Any]:
    return template_view(await s.routing.require_template(name, version))


@router.delete("/{name}", status_code=204)
async def delete_template(name: str, s: ServicesDep, who: Annotated[Caller, require("admin")]) -> Response:
    await s.routing.delete_template(name)
    return Response(status_code=204)


@router.post("/{name}/render")
async def render_preview(
    name: str, body: RenderBody, s: ServicesDep, who: Annotated[Caller, require("read")]
) -> dict[str, Any]:
    return await s.routing.render_stored(
        name, data=body.data, user_id=body.user_id, user=body.user, locale=body.locale, channel=body.channel
    )
