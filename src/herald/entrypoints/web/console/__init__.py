"""The operator console at ``/console``: server-rendered pages on the same process and port as
the API, styles and scripts served from the package (``herald/web/static/console``)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.staticfiles import StaticFiles

from herald.entrypoints.web.console import pages, pages_edit
from herald.entrypoints.web.console.base import (
    STATIC,
    Refused,
    SignInRequired,
    current,
    page,
    sign_in_redirect,
)


def install(app: FastAPI) -> None:
    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        return sign_in_redirect(exc)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        try:
            session = await current(request)
        except SignInRequired:
            session = None
        return page(request, "error.html", session, 403, title="Not allowed", detail=exc.detail)

    app.include_router(pages.router)
    app.include_router(pages_edit.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
