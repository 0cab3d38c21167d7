"""What every console page shares: herald's own Jinja2 templates (autoescaped; never the user
template sandbox), the session, the CSRF check of every write, and the security headers."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute

from herald.bootstrap import Container
from herald.domain import urgency
from herald.domain.errors import HeraldError
from herald.services.console import ConsoleService
from herald.services.console_auth import COOKIE, ConsoleSession, ConsoleSessions

STATIC = Path(__file__).resolve().parents[3] / "web" / "static" / "console"
MAX_FORM_BYTES = 512 * 1024
# Pages load only herald's own files; nothing inline runs, nothing is framed.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


env = jinja2.Environment(
    loader=jinja2.PackageLoader("herald.entrypoints.web.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["iso"] = _iso
env.filters["ms"] = _ms


class SignInRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class Refused(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def container(request: Request) -> Container:
    urgency.mark_urgent()  # someone waits for this page
    c: Container = request.app.state.container
    return c


def service(request: Request) -> ConsoleService:
    c = container(request)
    assert c.console is not None
    return c.console


def sessions(request: Request) -> ConsoleSessions:
    c = container(request)
    assert c.console_sessions is not None
    return c.console_sessions


async def current(request: Request) -> ConsoleSession:
    """The signed-in session, or a redirect to the sign-in page."""
    c = container(request)
    found = await sessions(request).session(request.cookies.get(COOKIE), c.clock.now())
    if found is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    return found


def same_origin(request: Request) -> bool:
    """A browser's write says where it comes from; refuse another site's (CSRF, second line)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", request.url.netloc)


async def form_data(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Refused("the form is too large")
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


async def writer(request: Request, *, scope: str = "admin") -> tuple[ConsoleSession, dict[str, list[str]]]:
    """A write: signed in, the session's CSRF token, same origin, and a key allowed to change
    things. Checked here, on the server, whatever the page showed."""
    session = await current(request)
    form = await form_data(request)
    given = (form.get("csrf") or [""])[0]
    if not given or not hmac.compare_digest(session.csrf.encode(), given.encode()):
        raise Refused("the form's CSRF token is missing or wrong: reload the page and try again")
    if not same_origin(request):
        raise Refused("this request comes from another site")
    if not session.may(scope):
        raise Refused(
            f"your API key ({', '.join(sorted(session.key.scopes))}) may look but not change anything"
        )
    return session, form


def first(form: Mapping[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


def page(
    request: Request, template: str, session: ConsoleSession | None, status: int = 200, **ctx: Any
) -> Response:
    html = env.get_template(template).render(
        session=session, path=request.url.path, request_query=request.url.query, **ctx
    )
    return secure(HTMLResponse(html, status_code=status))


def secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def redirect(url: str) -> Response:
    return secure(RedirectResponse(url, status_code=303))


def sign_in_redirect(exc: SignInRequired) -> Response:
    return redirect("/console/login?next=" + quote(exc.next_path, safe="/"))


class ConsoleRoute(APIRoute):
    """Console pages answer errors as pages: a HeraldError (not found, invalid, conflict) raised
    by a service becomes the error page with its status, never problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HeraldError as exc:
                try:
                    session = await current(request)
                except SignInRequired:
                    session = None
                return page(request, "error.html", session, exc.status, title=exc.title, detail=exc.detail)

        return handle


def safe_next(value: str | None) -> str:
    """Only a console path: never another site (open redirect)."""
    if not value or not value.startswith("/console") or value.startswith("//") or "\\" in value:
        return "/console"
    return value
