"""A plain HTTP receiver on loopback: the far end of a webhook, or of a chat service Apprise posts to.

It answers 200 to anything and records what it received. Faults are scripted for the next
requests, as the provider emulators do: :meth:`fail_next` answers a status (with ``Retry-After``
if asked), :meth:`delay_next` reads the whole request and then holds the answer (a receiver that
took the request and went quiet). :meth:`stop` releases every held answer first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Fault:
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class HttpReceiver:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://{self.netloc}{path}"

    def fail_next(self, status: int, *, retry_after: float | None = None, count: int = 1) -> None:
        shown = None if retry_after is None else str(int(retry_after))
        self._faults.extend(Fault(status, shown) for _ in range(count))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        self._faults.extend(Fault(delay=seconds) for _ in range(count))

    async def start(self) -> HttpReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets  # narrowing for the bound socket
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        fault = self._faults.popleft() if self._faults else Fault()
        if fault.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), fault.delay)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        return web.Response(status=fault.status, text=f"status {fault.status}", headers=headers)
