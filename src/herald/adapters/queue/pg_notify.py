"""Cross-process wake-ups for the ``sql`` queue on PostgreSQL: ``LISTEN``/``NOTIFY``.

Every :meth:`SqlQueue.wake` also sends ``NOTIFY herald_queue, '<channel>'`` (``'*'``: every
channel), so a router in an API process or the scheduler wakes the workers of every other
process at once instead of after their idle timeout. Each process keeps one listening
connection and wakes its local :class:`Signals` for whatever arrives.

Wake-ups are a latency optimisation, never a correctness requirement: workers still poll on
their idle timeout, so a lost notification (listener reconnecting, server restart) only costs
that timeout. Sending is therefore best effort, coalesced (one round trip carries every
channel woken meanwhile) and paced (at most one round per ``min_interval``), because workers
also wake their own channel after every send and that must not become a NOTIFY storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import psycopg
import structlog

from herald.adapters.queue.signals import Signals

log = structlog.get_logger("herald.queue")

ALL = "*"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PgWakeups:
    def __init__(
        self,
        dsn: str,
        signals: Signals,
        *,
        channel: str = "herald_queue",
        min_interval: float = 0.02,
    ) -> None:
        if not _IDENT.match(channel):
            raise ValueError(f"not a plain PostgreSQL identifier: {channel!r}")
        self.dsn = dsn
        self.signals = signals
        self.channel = channel
        self.min_interval = min_interval
        self.listening = asyncio.Event()
        self._pending: set[str] = set()
        self._sender: psycopg.AsyncConnection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, timeout: float = 5.0) -> None:
        """Start listening; wait (up to ``timeout``) until the LISTEN is in place."""
        self._listener = asyncio.create_task(self._listen(), name="herald-queue-listen")
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

    # Sending ---------------------------------------------------------------------------------
    def notify(self, channel: str | None) -> None:
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # woken from outside the event loop: the local signal is enough
            return
        self._pending.add(channel or ALL)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="herald-queue-notify")

    async def _flush(self) -> None:
        while self._pending and not self._closed:
            batch = {ALL} if ALL in self._pending else self._pending
            self._pending = set()
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                await self._sender.execute(
                    "SELECT pg_notify(%s, c) FROM unnest(%s::text[]) AS c", (self.channel, sorted(batch))
                )
            except (psycopg.Error, OSError) as exc:
                log.warning("queue.notify_failed", error=type(exc).__name__)
                if self._sender is not None:
                    await self._sender.close()
                    self._sender = None
                return  # best effort: the receivers' idle timeout covers it
            await asyncio.sleep(self.min_interval)

    # Listening -------------------------------------------------------------------------------
    async def _listen(self) -> None:
        delay = 0.2
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    delay = 0.2
                    self.signals.wake(None)  # whatever was sent while nobody listened
                    async for note in conn.notifies():
                        self.signals.wake(None if note.payload == ALL else note.payload)
                finally:
                    self.listening.clear()
                    await conn.close()
            except (psycopg.Error, OSError) as exc:
                log.warning("queue.listen_lost", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
