"""Templates (edit, live preview, versions), users, rules and topics."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from herald.domain.errors import HeraldError, NotFound, ValidationError
from herald.domain.models import Template
from herald.domain.validation import check_id
from herald.entrypoints.web.console.base import ConsoleRoute, current, first, page, redirect, service, writer

router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)

# The fields of each channel's variant (PRODUCT.md section 2); ``data`` is a JSON object.
FIELDS: dict[str, list[str]] = {
    "email": ["subject", "text", "html"],
    "sms": ["text"],
    "push": ["title", "body", "data"],
    "in_app": ["title", "body", "url"],
    "webhook": ["body"],
    "chat": ["body"],
}
MULTILINE = {"text", "html", "body"}


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _form_from_template(t: Template | None) -> dict[str, str]:
    """The edit form's fields for a stored template (or an empty form for a new one)."""
    form: dict[str, str] = {
        "category": (t.category or "") if t else "",
        "default_locale": t.default_locale if t else "en",
        "locales": _json_text(t.locales) if t and t.locales else "{}",
        "sample_data": "{}",
        "preview_user": "",
        "preview_locale": "",
    }
    for ch, names in FIELDS.items():
        variant = (t.channels.get(ch) if t else None) or {}
        for name in names:
            value = variant.get(name)
            form[f"{ch}.{name}"] = _json_text(value) if isinstance(value, dict) else (value or "")
    return form


def _parse_json_object(text: str, field: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"{field}: not valid JSON ({exc})", field=field) from None
    if not isinstance(value, dict):
        raise ValidationError(f"{field}: must be a JSON object", field=field)
    return value


def _template_from_form(name: str, form: dict[str, str]) -> Template:
    channels: dict[str, dict[str, Any]] = {}
    for ch, names in FIELDS.items():
        variant: dict[str, Any] = {}
        for n in names:
            raw = form.get(f"{ch}.{n}", "")
            if not raw.strip():
                continue
            variant[n] = _parse_json_object(raw, f"channels.{ch}.{n}") if n == "data" else raw
        if variant:
            channels[ch] = variant
    return Template(
        name=name,
        version=0,
        category=form.get("category") or None,
        channels=channels,
        locales=_parse_json_object(form.get("locales", "{}"), "locales"),
        default_locale=form.get("default_locale") or "en",
    )


def _flat(form: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in form.items() if v}


async def _template_page(
    request: Request,
    name: str,
    form: dict[str, str],
    *,
    status: int = 200,
    error: HeraldError | None = None,
    preview: dict[str, Any] | None = None,
    saved: str | None = None,
) -> Response:
    session = await current(request)
    svc = service(request)
    versions = await svc.template_versions(name)
    return page(
        request,
        "template.html",
        session,
        status,
        name=name,
        form=form,
        fields=FIELDS,
        multiline=MULTILINE,
        categories=sorted(svc.catalog.categories),
        versions=versions,
        error=error,
        preview=preview,
        saved=saved,
        viewing=request.query_params.get("version"),
    )


@router.get("/templates")
async def templates(request: Request, new: str | None = None) -> Response:
    session = await current(request)
    if new:
        try:
            check_id(new.strip(), "name")
        except HeraldError as exc:
            rows = await service(request).templates()
            return page(request, "templates.html", session, 422, rows=rows, error=exc.detail)
        return redirect("/console/templates/" + quote(new.strip(), safe=""))
    return page(request, "templates.html", session, rows=await service(request).templates(), error=None)


@router.get("/templates/{name}")
async def template(request: Request, name: str, version: int | None = None) -> Response:
    t = await service(request).template(name, version)
    if t is None and version is not None:
        session = await current(request)
        return page(
            request, "error.html", session, 404, title="Not found", detail=f"{name} v{version} does not exist"
        )
    return await _template_page(
        request, name, _form_from_template(t), saved=request.query_params.get("saved")
    )


async def _preview(request: Request, name: str, form: dict[str, str]) -> dict[str, Any]:
    draft = _template_from_form(name, form)
    data = _parse_json_object(form.get("sample_data", "{}"), "sample_data")
    return await service(request).preview(
        draft, data=data, user_id=form.get("preview_user") or None, locale=form.get("preview_locale") or None
    )


@router.post("/templates/{name}/preview")
async def preview(request: Request, name: str) -> Response:
    """Render the form as it is (saved or not) in herald's sandbox; ``fragment=1`` answers only
    the preview (the page's script asks for it as the author types)."""
    session, raw = await writer(request, scope="read")  # renders nothing stored: a read
    form = _flat(raw)
    error: HeraldError | None = None
    rendered: dict[str, Any] | None = None
    try:
        rendered = await _preview(request, name, form)
    except HeraldError as exc:
        error = exc
    if form.get("fragment") == "1":
        return page(
            request, "preview.html", session, 200 if error is None else 422, preview=rendered, error=error
        )
    return await _template_page(
        request, name, form, status=200 if error is None else 422, error=error, preview=rendered
    )


@router.post("/templates/{name}")
async def save_template(request: Request, name: str) -> Response:
    _session, raw = await writer(request)
    form = _flat(raw)
    try:
        stored = await service(request).save_template(_template_from_form(name, form))
    except HeraldError as exc:
        return await _template_page(request, name, form, status=422, error=exc)
    return redirect(f"/console/templates/{quote(name, safe='')}?saved={stored.version}")


# Users ---------------------------------------------------------------------------------------
@router.get("/users")
async def find_user(request: Request, id: str | None = None) -> Response:
    session = await current(request)
    if id and id.strip():
        return redirect("/console/users/" + quote(id.strip(), safe=""))
    return page(request, "users.html", session)


@router.get("/users/{user_id}")
async def user(request: Request, user_id: str) -> Response:
    session = await current(request)
    try:
        view = await service(request).user(user_id)
    except NotFound as exc:
        return page(request, "error.html", session, 404, title="Not found", detail=exc.detail)
    return page(request, "user.html", session, **view)


# Rules and topics ----------------------------------------------------------------------------
@router.get("/rules")
async def rules(request: Request, new: str | None = None) -> Response:
    session = await current(request)
    if new and new.strip():
        return redirect("/console/rules/" + quote(new.strip(), safe=""))
    return page(request, "rules.html", session, rules=await service(request).rules())


async def _rule_page(
    request: Request, event_type: str, body: str, *, status: int = 200, error: HeraldError | None = None
) -> Response:
    session = await current(request)
    return page(
        request,
        "rule.html",
        session,
        status,
        event_type=event_type,
        body=body,
        error=error,
        saved=request.query_params.get("saved"),
    )


@router.get("/rules/{event_type}")
async def rule(request: Request, event_type: str) -> Response:
    found = await service(request).rule(event_type)
    example = {"template": "welcome", "channels": ["email"], "conditions": []}
    body = _json_text(found.as_json() if found else example)
    return await _rule_page(request, event_type, body)


@router.post("/rules/{event_type}")
async def save_rule(request: Request, event_type: str) -> Response:
    _session, raw = await writer(request)
    body = first(raw, "body")
    try:
        await service(request).save_rule(event_type, _parse_json_object(body, "body"))
    except HeraldError as exc:
        return await _rule_page(request, event_type, body, status=422, error=exc)
    return redirect(f"/console/rules/{quote(event_type, safe='')}?saved=1")


@router.get("/topics")
async def topics(request: Request) -> Response:
    session = await current(request)
    items, broadcasts = await service(request).topics()
    return page(request, "topics.html", session, topics=items, broadcasts=broadcasts)
