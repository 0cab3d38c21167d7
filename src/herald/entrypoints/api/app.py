"""The FastAPI application. Services are built once, in the lifespan, by the bootstrap."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from herald import __version__
from herald.bootstrap import Container
from herald.entrypoints.api import (
    problems,
    routes_events,
    routes_inbox,
    routes_notifications,
    routes_ops,
    routes_templates,
    routes_topics,
    routes_users,
    routes_webhooks,
)
from herald.entrypoints.api.fast_send import HeraldApi
from herald.entrypoints.api.limits import BodyLimit

log = structlog.get_logger("herald.api")


def create_app(
    make_container: Callable[[], Awaitable[Container]],
    *,
    roles: set[str] | None = None,
    max_body_bytes: int = 1_048_576,
) -> FastAPI:
    """``roles`` are the background roles this process also runs (router, worker, scheduler)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = await make_container()
        app.state.container = container
        container.start_roles(roles or set())
        log.info("herald.started", roles=sorted(roles or ()))
        try:
            yield
        finally:
            await container.stop()
            log.warning("herald.stopped", detail="graceful shutdown complete")

    app = HeraldApi(
        title="herald",
        version=__version__,
        description="Self-hosted notification service: accept, route, deliver and prove every message.",
        lifespan=lifespan,
    )
    problems.install(app)
    for module in (
        routes_notifications,
        routes_events,
        routes_topics,
        routes_users,
        routes_templates,
        routes_inbox,
        routes_ops,
        routes_webhooks,
    ):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.enable_fast_send(max_body_bytes)  # POST /v1/notifications without the stack (fast_send.py)
    return app
