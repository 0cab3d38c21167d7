"""A receiver for herald's ops alerts (``[alerts] webhook_url``): records every alert posted to it."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class AlertSink:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()

        async def handle(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.Response(status=204)

        app.router.add_post("/alerts", handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/alerts"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
