"""``/docs`` and ``/redoc`` served from the package, and an OpenAPI document that says the truth.

* The pages load Swagger UI and Redoc from ``herald/web/static/vendor`` (versions and licences
  there), never from a CDN: they work on a machine without internet access.
* Bearer authentication is declared (``bearerAuth``, by ``deps.caller``) on every operation
  that needs it, so the Authorize button works and "Try it out" sends the key.
* Errors are declared as they are answered: ``application/problem+json`` (:class:`Problem`),
  for 401/403 where authentication applies, 404 where the path names something, 400/422 where
  there is input; FastAPI's default ``HTTPValidationError`` is gone.
* The main answers are typed (``openapi_models.TYPED``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.staticfiles import StaticFiles

from herald.entrypoints.api.openapi_models import TYPED, Problem

VENDOR = Path(__file__).resolve().parents[2] / "web" / "static" / "vendor"
SWAGGER = "swagger-ui-dist-5.36.0"
REDOC = "redoc-2.5.4"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_ANSWERS = {
    "400": ("BadRequest", "the body is not valid JSON"),
    "401": ("Unauthorized", "no API key, or an unknown, revoked or malformed one"),
    "403": ("Forbidden", "the key's scope does not allow this"),
    "404": ("NotFound", "what the path names does not exist"),
    "409": ("Conflict", "the request conflicts with the current state (or an idempotent retry in flight)"),
    "413": ("TooLarge", "the body is larger than server.max_body_bytes"),
    "422": ("Invalid", "a field is invalid (``field`` names it)"),
    "503": ("NotReady", "a dependency (database, cache) does not answer"),
}
# Operations that may also answer 409 (replay of a delivery not dead; an idempotency key whose
# first request is still being accepted) or 503.
_CONFLICTS = {
    ("post", "/v1/notifications"),
    ("post", "/v1/notifications/batch"),
    ("post", "/v1/events"),
    ("post", "/v1/dead-letters/{delivery_id}/replay"),
}
_UNAVAILABLE = {("get", "/readyz")}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": PROBLEM_REF}}}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    models: list[type[BaseModel]] = [Problem, *dict.fromkeys(TYPED.values())]
    _, defs = models_json_schema(
        [(m, "serialization") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas.update(defs.get("$defs", {}))
    components["responses"] = {name: _problem_response(text) for name, text in _ANSWERS.values()}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses: dict[str, Any] = op["responses"]
            has_input = "requestBody" in op or any(
                p.get("in") in ("query", "header") for p in op.get("parameters", [])
            )
            wanted = []
            if op.get("security"):  # deps.caller declares bearerAuth (HTTPBearer)
                wanted += ["401", "403"]
            if "{" in path:
                wanted.append("404")
            if "requestBody" in op:
                wanted += ["400", "413"]
            if (method, path) in _CONFLICTS:
                wanted.append("409")
            if (method, path) in _UNAVAILABLE:
                wanted.append("503")
            if has_input or "{" in path or "422" in responses:
                wanted.append("422")
            for code in wanted:
                responses[code] = {"$ref": f"#/components/responses/{_ANSWERS[code][0]}"}
            for (m, p, code), model in TYPED.items():
                if m == method and p == path and code in responses and isinstance(responses[code], dict):
                    responses[code]["content"] = {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                    }
    _short_operation_ids(doc)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return doc


def _short_operation_ids(doc: dict[str, Any]) -> None:
    """``get_template`` rather than FastAPI's ``get_template_v1_templates__name__get``: the names
    generated clients call. Made from the summary (the handler's name), unique."""
    seen: set[str] = set()
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            if not isinstance(op, dict) or not op.get("summary"):
                continue
            base = "_".join(op["summary"].lower().split())
            name, n = base, 2
            while name in seen:
                name, n = f"{base}_{n}", n + 1
            seen.add(name)
            op["operationId"] = name


def _local_only(page: HTMLResponse) -> HTMLResponse:
    """A Content-Security-Policy that lets the page load nothing from another origin (a second
    line behind the vendored files, which reference none: see vendor/*/HERALD-CHANGES.md).
    Inline scripts (FastAPI's page set-up) are allowed by their hash; the libraries style inline."""
    body = bytes(page.body).decode()
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", body, flags=re.DOTALL)
    ]
    page.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; font-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        f"script-src 'self' {' '.join(hashes)}; worker-src 'self' blob:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return page


def install(app: FastAPI) -> None:
    """Call with ``docs_url=None, redoc_url=None`` given to FastAPI (its pages use a CDN)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
    app.mount("/docs/static", StaticFiles(directory=VENDOR), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _local_only(
            get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{app.title} API",
                swagger_js_url=f"/docs/static/{SWAGGER}/swagger-ui-bundle.js",
                swagger_css_url=f"/docs/static/{SWAGGER}/swagger-ui.css",
                swagger_favicon_url=f"/docs/static/{SWAGGER}/favicon-32x32.png",
                # No badge fetched from validator.swagger.io; keep the key across reloads.
                swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _local_only(
            get_redoc_html(
                openapi_url="/openapi.json",
                title=f"{app.title} API",
                redoc_js_url=f"/docs/static/{REDOC}/redoc.standalone.js",
                redoc_favicon_url=f"/docs/static/{SWAGGER}/favicon-32x32.png",
                with_google_fonts=False,
            )
        )
