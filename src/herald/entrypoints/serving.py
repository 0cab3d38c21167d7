"""uvicorn's server, saying when herald is ready: ``herald listening on http://HOST:PORT``."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import uvicorn


class ReadyServer(uvicorn.Server):
    """Prints one line on stdout once the application has started (services built, database
    migrated, roles running) and the socket is listening: what ``scripts/serve`` and a
    user's terminal wait for."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            host = self.config.host
            shown = f"[{host}]" if ":" in host else host
            port = self.config.port
            if port == 0 and self.servers:  # an ephemeral port: the one the OS chose
                port = self.servers[0].sockets[0].getsockname()[1]
            sys.stdout.write(f"herald listening on http://{shown}:{port}\n")
            sys.stdout.flush()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn waits for open responses before it shuts down: live streams end now (their
        # clients reconnect to another process and resume), so the process exits in seconds.
        from herald.entrypoints.api.app import end_streams  # noqa: PLC0415 - loaded by then

        end_streams(self.config.app)
