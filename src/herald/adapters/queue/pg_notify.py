"""Cross-process wake-ups for the ``sql`` queue on PostgreSQL: ``LISTEN``/``NOTIFY``.

Every :meth:`SqlQueue.wake` also sends ``NOTIFY herald_queue, '<channel>'`` (``'*'``: every
channel), so a router in an API process or the scheduler wakes the workers of every other
process at once instead of after their idle timeout. Each process keeps one listening
connection and wakes its local :class:`Signals` for whatever arrives.

The same channel carries the routers' wake-ups (payload ``@route``, ``@route!`` when a
critical notification is among the new work): a bare ``herald api`` runs no router, so without
them a notification it accepted waited for a worker's router to poll (up to a second, issue 23).
A process that routes registers :meth:`PgWakeups` ``on_route``; every other process ignores them.

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
from collections.abc import Callable

import psycopg
import structlog
from sqlalchemy import func, select

from herald.adapters.queue.signals import Signals
from herald.adapters.store.database import Database

log = structlog.get_logger("herald.queue")

ALL = "*"
ROUTE = "@route"  # new notifications to route
ROUTE_URGENT = "@route!"  # ... and a critical one among them: no gathering
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PgWakeups:
    def __init__(
        self,
        dsn: str,
        signals: Signals,
        *,
        channel: str = "herald_queue",
        min_interval: float = 0.02,
        on_route: Callable[[bool], None] | None = None,
        on_channel: Callable[[str | None], None] | None = None,
    ) -> None:
        if not _IDENT.match(channel):
            raise ValueError(f"not a plain PostgreSQL identifier: {channel!r}")
        self.dsn = dsn
        self.signals = signals
        self.channel = channel
        self.min_interval = min_interval
        self.on_route = on_route  # this process's routers, woken with urgent=True/False
        # A channel woken by another process (default: this process's signals for it).
        self.on_channel: Callable[[str | None], None] = on_channel or signals.wake
        self.listening = asyncio.Event()
        self._pending: set[str] = set()
        self._sender: psycopg.AsyncConnection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._pacing = False  # the flusher is only sleeping between two rounds

    async def start(self, timeout: float = 5.0) -> None:
        """Start listening; wait (up to ``timeout``) until the LISTEN is in place."""
        self._listener = asyncio.create_task(self._listen(), name="herald-queue-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout)

    async def close(self) -> None:
        # A wake-up sent just before closing still goes out (``herald dead-letters replay``
        # wakes the running herald's senders, then exits): the flush under way ends first.
        flusher = self._flusher
        if flusher is not None and not flusher.done() and (self._pending or not self._pacing):
            await asyncio.wait({flusher}, timeout=1.0)
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
        self._schedule(loop)

    def notify_route(self, urgent: bool) -> None:
        """Wake the routers of every process (a critical notification: at once)."""
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._pending.add(ROUTE_URGENT if urgent else ROUTE)
        if urgent and self._flusher is not None and not self._flusher.done() and self._pacing:
            # Pacing holds wake-ups of delivery workers together; a critical notification
            # does not wait for it: its own round trip now.
            self._flusher.cancel()
            self._flusher = None
        self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="herald-queue-notify")

    async def _flush(self) -> None:
        while self._pending and not self._closed:
            batch = self._pending
            if ALL in batch:
                batch = {ALL} | (batch & {ROUTE, ROUTE_URGENT})
            if ROUTE_URGENT in batch:
                batch.discard(ROUTE)
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
            self._pacing = True
            try:
                await asyncio.sleep(self.min_interval)
            finally:
                self._pacing = False

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
                    self.on_channel(None)  # whatever was sent while nobody listened
                    if self.on_route is not None:
                        self.on_route(False)  # likewise for routers
                    async for note in conn.notifies():
                        payload = note.payload
                        if payload.startswith(ROUTE):
                            if self.on_route is not None:
                                self.on_route(payload == ROUTE_URGENT)
                            continue
                        self.on_channel(None if payload == ALL else payload)
                finally:
                    self.listening.clear()
                    await conn.close()
            except (psycopg.Error, OSError) as exc:
                log.warning("queue.listen_lost", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def start_wakeups(
    db: Database,
    signals: Signals,
    on_route: Callable[[bool], None] | None = None,
    on_channel: Callable[[str | None], None] | None = None,
) -> PgWakeups:
    """Listen on the channel of ``db``'s schema (deployments sharing a database do not wake each
    other) and return the started :class:`PgWakeups`."""
    dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = await db.run(lambda c: c.execute(select(func.current_schema())).scalar())
    channel = "herald_queue"
    if schema and schema != "public":
        channel = (channel + "_" + re.sub(r"[^a-z0-9_]", "_", str(schema).lower()))[:63]
    wakeups = PgWakeups(dsn, signals, channel=channel, on_route=on_route, on_channel=on_channel)
    await wakeups.start()
    return wakeups
