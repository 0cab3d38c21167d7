"""Templates: versioned, per channel and locale, compiled in the sandbox before they are stored."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response

from herald.domain.errors import NotFound, TemplateError, ValidationError
from herald.domain.models import ALL_CHANNELS, Template, User
from herald.domain.validation import check_id, check_locale
from herald.entrypoints.api.deps import Caller, ContainerDep, require
from herald.entrypoints.api.schemas import RenderBody, TemplateBody
from herald.entrypoints.api.views import template_view
from herald.services import render_pool
from herald.services.accept import inline_user
from herald.services.rendering import RenderBudgetError, check_variant, render_variant

router = APIRouter(prefix="/v1/templates", tags=["templates"])
_CHANNELS = {c.value for c in ALL_CHANNELS}


def _sample_context(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": data,
        "user": User(id="sample").template_view(),
        "notification": {"id": "sample", "category": None, "priority": "normal"},
    }


def _trial(variant: dict[str, Any], data: dict[str, Any] | None, where: str) -> None:
    """Render ``variant`` with the sample data (or none): a template over its budget is
    refused now rather than failing every send; with sample data any render error is too."""
    try:
        render_variant(variant, _sample_context(data or {}))
    except RenderBudgetError as exc:
        what = "with the sample data" if data is not None else "without data"
        raise RenderBudgetError(f"{where}: {what}, {exc.detail}", limit=exc.limit, field=where) from None
    except TemplateError as exc:
        if data is not None:
            raise TemplateError(f"{where}: with the sample data, {exc.detail}", field=where) from None


def _check(body: TemplateBody, c: ContainerDep) -> None:
    """Compile every variant and render it once with the sample data (run off the loop)."""
    for ch, variant in body.channels.items():
        if ch not in _CHANNELS:
            raise ValidationError(f"unknown channel {ch!r}", field=f"channels.{ch}")
        try:
            check_variant(variant)
        except TemplateError as exc:
            raise TemplateError(exc.detail, field=f"channels.{ch}") from None
    for locale, chans in body.locales.items():
        check_locale(locale, f"locales.{locale}")
        for ch, variant in chans.items():
            if ch not in body.channels:
                raise ValidationError(
                    f"locale {locale} overrides channel {ch!r} that has no default variant",
                    field=f"locales.{locale}.{ch}",
                )
            try:
                check_variant(variant)
            except TemplateError as exc:
                raise TemplateError(exc.detail, field=f"locales.{locale}.{ch}") from None
            _trial(variant, body.sample_data, f"locales.{locale}.{ch}")
    for ch, variant in body.channels.items():
        _trial(variant, body.sample_data, f"channels.{ch}")


@router.put("/{name}")
async def put_template(
    name: str, body: TemplateBody, c: ContainerDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    check_id(name, "name")
    if body.category is not None:
        c.catalog.category(body.category)
    variants = len(body.channels) + sum(len(chans) for chans in body.locales.values())
    try:
        await render_pool.for_request(_check, body, c, renders=variants + 1)
    except RenderBudgetError as exc:
        if body.sample_data is None or "sample data" in exc.detail:
            raise
        raise RenderBudgetError(f"with the sample data, {exc.detail}", limit=exc.limit) from None
    template = Template(
        name=name,
        version=0,
        category=body.category,
        channels=body.channels,
        locales=body.locales,
        default_locale=body.default_locale,
        created_at=c.clock.now(),
    )
    stored = await c.store.put_template(template)
    c.lookups.forget_template(name)  # the next send from this process uses the new version
    return template_view(stored)


@router.get("/{name}")
async def get_template(
    name: str, c: ContainerDep, who: Annotated[Caller, require("read")], version: int | None = None
) -> dict[str, Any]:
    template = await c.store.get_template(name, version)
    if template is None:
        raise NotFound(f"template {name!r} does not exist")
    return template_view(template)


@router.delete("/{name}", status_code=204)
async def delete_template(name: str, c: ContainerDep, who: Annotated[Caller, require("admin")]) -> Response:
    deleted = await c.store.delete_template(name)
    c.lookups.forget_template(name)
    if not deleted:
        raise NotFound(f"template {name!r} does not exist")
    return Response(status_code=204)


@router.post("/{name}/render")
async def render_preview(
    name: str, body: RenderBody, c: ContainerDep, who: Annotated[Caller, require("read")]
) -> dict[str, Any]:
    template = await c.store.get_template(name)
    if template is None:
        raise NotFound(f"template {name!r} does not exist")
    user: User
    if body.user_id is not None:
        found = await c.store.get_user(body.user_id)
        if found is None:
            raise ValidationError(f"unknown user {body.user_id!r}", field="user_id")
        user = found
    elif body.user is not None:
        user = inline_user({"id": "preview", **body.user}, "user")
    else:
        user = User(id="preview")
    locale = body.locale or user.locale or c.catalog.default_locale
    channels = [body.channel] if body.channel else list(template.channels)
    context = {
        "data": body.data,
        "user": user.template_view(),
        "notification": {"id": "preview", "category": template.category, "priority": "normal"},
    }
    rendered: dict[str, Any] = {}
    for ch in channels:
        variant = template.variant(ch, locale)
        if variant is None:
            raise ValidationError(f"template {name!r} has no {ch} variant", field="channel")
        rendered[ch] = await render_pool.for_request(render_variant, variant, context)
    return {"name": name, "version": template.version, "locale": locale, "channels": rendered}
