"""Wake-ups of live inbox streams across processes through PostgreSQL ``LISTEN``/``NOTIFY``.

The process that sends an in-app item (a ``herald worker``) numbers it in the feed, commits,
then ``NOTIFY herald_inbox, '<user id>'``; every process listening (each ``herald api``) wakes
the streams it holds for that user, which read the new items from the database. The payload is
only the user id: nothing personal travels, and resume never depends on the signal.

Sending is coalesced: the user ids woken while one round trip is under way go in the next one
(``SELECT pg_notify(…) FROM unnest(…)``). The listener reconnects with backoff and, once back,
wakes every stream (whatever was sent while nobody listened is then read from the feed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import psycopg
import structlog

from herald.adapters.live.local import LocalLiveSignals

log = structlog.get_logger("herald.live")

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PgLiveSignals(LocalLiveSignals):
    def __init__(self, dsn: str, *, channel: str = "herald_inbox") -> None:
        super().__init__()
        if not _IDENT.match(channel):
            raise ValueError(f"not a plain PostgreSQL identifier: {channel!r}")
        self.dsn = dsn
        self.channel = channel
        self.listening = asyncio.Event()
        self._pending: set[str] = set()
        self._sender: psycopg.AsyncConnection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, timeout: float = 5.0) -> None:
        self._listener = asyncio.create_task(self._listen(), name="herald-live-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout)

    async def close(self) -> None:
        self._closed = True
        for task in (self._listener, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sender is not None:
            await self._sender.close()
            self._sender = None
        await super().close()

    def notify(self, user_id: str) -> None:
        if self._closed:
            return
        # This process's own streams hear it from the database like everyone else's; waking
        # them here as well costs nothing and keeps one-process latency free of the round trip.
        self.deliver(user_id)
        self._pending.add(user_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="herald-live-notify")

    async def _flush(self) -> None:
        while self._pending and not self._closed:
            batch, self._pending = sorted(self._pending), set()
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                await self._sender.execute(
                    "SELECT pg_notify(%s, u) FROM unnest(%s::text[]) AS u", (self.channel, batch)
                )
            except (psycopg.Error, OSError) as exc:
                log.warning("live.notify_failed", error=type(exc).__name__)
                if self._sender is not None:
                    await self._sender.close()
                    self._sender = None
                return  # best effort: the streams' own heartbeat look covers it

    async def _listen(self) -> None:
        delay = 0.2
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    delay = 0.2
                    self.deliver(None)  # whatever was sent while nobody listened
                    async for note in conn.notifies():
                        self.deliver(note.payload)
                finally:
                    self.listening.clear()
                    await conn.close()
            except (psycopg.Error, OSError) as exc:
                log.warning("live.listen_lost", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
