"""End-user pages: the widget script, the hosted preference page, unsubscribe confirmation.

- ``GET /widget/herald-inbox.js``: the ``<herald-inbox>`` web component and ``HeraldInbox``.
- ``GET /preferences?token=<user token>``: the user's channels and categories by channels, each a
  checkbox (``channels.<channel>``, ``categories.<category>.<channel>``); required categories
  are shown, not changeable. ``POST /preferences`` writes what ``PUT /v1/users/{id}/preferences``
  writes (quiet hours and digests kept as they are), then shows the page again (303).
- ``GET /v1/unsubscribe/{token}`` shows what would stop and a button: link scanners and mail
  previews open links, and opening one changes nothing. The button, like a mail client's
  RFC 8058 one-click, ``POST``\\ s the same URL.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from herald.bootstrap import Container
from herald.domain.audience import channel_choice
from herald.domain.errors import AuthenticationError, NotFound, ValidationError
from herald.domain.models import Preferences
from herald.entrypoints.deps import ContainerDep, ServicesDep
from herald.entrypoints.service_layer import Services
from herald.entrypoints.web.i18n import Strings, pick

router = APIRouter(include_in_schema=False)

_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@functools.cache
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("herald.entrypoints.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=_PAGE_HEADERS)


def _message(t: Strings, title: str, message: str, *, status: int, kind: str = "err") -> HTMLResponse:
    return _page("message.html", status, t=t, title=title, message=message, kind=kind)


# The widget ------------------------------------------------------------------------------------
@functools.cache
def _widget() -> bytes:
    return resources.files("herald.web").joinpath("static/herald-inbox.js").read_bytes()


@router.get("/widget/herald-inbox.js")
async def widget() -> Response:
    return Response(
        _widget(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


# The preference page ---------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _user(c: Container, token: str | None) -> str:
    if not token or not token.startswith("ut_"):
        raise AuthenticationError("missing or invalid token")
    return c.user_tokens.verify(token, c.clock.now())


def _view(c: Container, prefs: Preferences | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stored = prefs or Preferences(user_id="")
    names = sorted(c.catalog.enabled_channels)
    channels = [{"name": ch, "enabled": stored.channels.get(ch, True)} for ch in names]
    categories = []
    for name, cat in sorted(c.catalog.categories.items()):
        cells = []
        for ch in names:
            on = channel_choice(stored, cat, ch).enabled  # the router's own rule
            cells.append({"channel": ch, "enabled": on})
        categories.append({"name": name, "required": not cat.opt_out, "cells": cells})
    return channels, categories


async def _strings(s: Services, request: Request, lang: str | None, user_id: str | None) -> Strings:
    user = await s.directory.user(user_id) if user_id else None
    return Strings(pick(lang, user.locale if user else None, request.headers.get("accept-language")))


@router.get("/preferences")
async def preferences_page(
    request: Request,
    c: ContainerDep,
    s: ServicesDep,
    token: str | None = None,
    lang: str | None = None,
    saved: int = 0,
) -> HTMLResponse:
    try:
        user_id = _user(c, token)
    except AuthenticationError:
        t = await _strings(s, request, lang, None)
        return _message(t, t("prefs_title"), t("link_invalid"), status=401)
    t = await _strings(s, request, lang, user_id)
    try:
        prefs = await s.directory.preferences(user_id)
    except NotFound:
        return _message(t, t("prefs_title"), t("link_invalid"), status=404)
    channels, categories = _view(c, prefs)
    return _page(
        "preferences.html",
        t=t,
        token=token,
        action="/preferences",
        channels=channels,
        categories=categories,
        saved=bool(saved),
    )


@router.post("/preferences")
async def save_preferences(request: Request, c: ContainerDep, s: ServicesDep) -> Response:
    form = await _form(request)
    token, lang = form.get("token"), form.get("lang")
    try:
        user_id = _user(c, token)
    except AuthenticationError:
        t = await _strings(s, request, lang, None)
        return _message(t, t("prefs_title"), t("link_invalid"), status=401)
    stored = await s.directory.preferences(user_id) or Preferences(user_id=user_id)
    names = sorted(c.catalog.enabled_channels)
    channels = {ch: f"channels.{ch}" in form for ch in names}
    categories: dict[str, dict[str, bool]] = {}
    for name, cat in c.catalog.categories.items():
        if not cat.opt_out:
            continue  # required: shown, never written from here
        for ch in names:
            on = f"categories.{name}.{ch}" in form
            if on != channels[ch]:  # only where it differs from the channel: the channel decides the rest
                categories.setdefault(name, {})[ch] = on
    # Channels herald does not run keep what the user had (the API may have set them).
    kept = {ch: v for ch, v in stored.channels.items() if ch not in channels}
    await s.directory.save_preferences(
        Preferences(
            user_id=user_id,
            channels={**kept, **channels},
            categories=categories,
            quiet_hours=stored.quiet_hours,
            digests=stored.digests,
        )
    )
    query = {"token": token or "", "saved": "1", **({"lang": lang} if lang else {})}
    return RedirectResponse("/preferences?" + urlencode(query), status_code=303, headers=_PAGE_HEADERS)


# Unsubscribe -----------------------------------------------------------------------------------
def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@router.get("/v1/unsubscribe/{token}")
async def unsubscribe_page(
    token: str, request: Request, c: ContainerDep, s: ServicesDep, lang: str | None = None
) -> HTMLResponse:
    """What would stop, and a button. Opening the link changes nothing."""
    try:
        user_id, category, channel = c.unsubscribe.verify(token)
    except ValidationError:
        t = await _strings(s, request, lang, None)
        return _message(t, t("unsub_title"), t("link_invalid"), status=422)
    t = await _strings(s, request, lang, user_id)
    return _page(
        "unsubscribe.html",
        t=t,
        action=f"/v1/unsubscribe/{token}",
        category=category,
        channel=channel,
    )


@router.post("/v1/unsubscribe/{token}", response_model=None)
async def unsubscribe(
    token: str, request: Request, c: ContainerDep, s: ServicesDep
) -> dict[str, Any] | HTMLResponse:
    """RFC 8058 one-click unsubscribe (mail clients POST here), and the page's button."""
    html = _wants_html(request)
    lang = (await _form(request)).get("lang") if html else None
    try:
        user_id, category, channel = c.unsubscribe.verify(token)
    except ValidationError:
        if not html:
            raise
        t = await _strings(s, request, lang, None)
        return _message(t, t("unsub_title"), t("link_invalid"), status=422)
    await s.directory.unsubscribe(user_id, category, channel)
    if html:
        t = await _strings(s, request, lang, user_id)
        done = t("unsub_done", category=category, channel=t.channel(channel))
        return _message(t, t("unsub_done_title"), done, status=200, kind="ok")
    return {"unsubscribed": True, "category": category, "channel": channel}
