"""The FastAPI application. Services are built once, in the lifespan, by the bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from herald import __version__
from herald.bootstrap import Container
from herald.entrypoints.api import (
    openapi_doc,
    problems,
    routes_events,
    routes_inbox,
    routes_notifications,
    routes_ops,
    routes_stats,
    routes_templates,
    routes_topics,
    routes_tracking,
    routes_users,
    routes_users_batch,
    routes_webhooks,
)
from herald.entrypoints.api.cors import UserCors
from herald.entrypoints.api.fast_send import HeraldApi
from herald.entrypoints.api.limits import BodyLimit
from herald.entrypoints.api.strict_body import StrictJsonBody
from herald.entrypoints.children import WorkerChildren
from herald.entrypoints.web import console
from herald.entrypoints.web import pages as web_pages

log = structlog.get_logger("herald.api")


def _cors_origins(app: FastAPI) -> list[str] | None:
    container = getattr(app.state, "container", None)
    return container.settings.server.cors_origins if isinstance(container, Container) else None


def end_streams(app: object) -> None:
    """Shutting down: end every live inbox stream (safe from a signal handler)."""
    state = getattr(app, "state", None)
    container = getattr(state, "container", None)
    if isinstance(container, Container):
        container.hub.close_streams_threadsafe()


def create_app(
    make_container: Callable[[], Awaitable[Container]],
    *,
    roles: set[str] | None = None,
    max_body_bytes: int = 1_048_576,
    children: WorkerChildren | None = None,
) -> FastAPI:
    """``roles`` are the background roles this process also runs (router, worker, scheduler).

    ``children``: delivery for their channels runs in supervised child processes; this
    process's ``worker`` role then sends only for the channels the children do not serve.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = await make_container()
        app.state.container = container
        app.state.children = children
        in_process = None
        if children is not None:
            in_process = [
                ch for ch in container.delivery.pools if ch not in children.channels or ch in children.shared
            ]
            container.queue.add_wake_listener(children.wake)
        container.start_roles(roles or set(), channels=in_process)
        if children is not None:
            await children.start()
        processes = len(children.describe()) if children else 0
        log.info("herald.started", roles=sorted(roles or ()), worker_processes=processes)
        try:
            yield
        finally:
            if children is not None:
                # The children finish their sends while this process finishes its own.
                await asyncio.gather(children.stop(), container.stop())
            else:
                await container.stop()
            log.warning("herald.stopped", detail="graceful shutdown complete")

    app = HeraldApi(
        title="herald",
        version=__version__,
        description="Self-hosted notification service: accept, route, deliver and prove every message.",
        lifespan=lifespan,
        docs_url=None,  # served from the package by openapi_doc (FastAPI's pages use a CDN)
        redoc_url=None,
    )
    problems.install(app)
    for module in (
        routes_notifications,
        routes_events,
        routes_topics,
        routes_users_batch,
        routes_users,
        routes_templates,
        routes_inbox,
        routes_ops,
        routes_webhooks,
        routes_tracking,
        routes_stats,
        web_pages,  # the end users' pages and the widget script (entrypoints/web)
    ):
        app.include_router(module.router)
    console.install(app)  # /console (issue 20)
    openapi_doc.install(app)  # /docs, /redoc offline; bearer auth and problem+json declared
    app.add_middleware(StrictJsonBody)  # inside the body limit: what it buffers is bounded
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(problems.CatchAll)  # outermost: an exception anywhere is one log line
    app.add_middleware(UserCors, origins=lambda: _cors_origins(app))
    app.enable_fast_send(max_body_bytes)  # POST /v1/notifications without the stack (fast_send.py)
    return app
