"""One PostgreSQL ``LISTEN``/``NOTIFY`` channel: the listener and the sender every wake-up uses.

Both the queue's wake-ups (:mod:`herald.adapters.queue.pg_notify`: workers, relays and routers
of other processes) and the live inbox's (:mod:`herald.adapters.live.pg`: streams held by other
processes) are a :class:`PgChannel`; only what a payload means differs, and that is the
callback's business.

**Listening.** One connection per channel and process, in autocommit, ``LISTEN``ing. Every
notification's payload goes to the callback. When the connection is lost the listener
reconnects with backoff (0.2 s, doubling to 5 s); each time it is (back) in place the callback
gets ``None``: "whatever was sent while nobody listened", which the receivers treat as "look at
everything".

**Sending.** Best effort: a notification is a latency optimisation, never a correctness
requirement (the receivers also look on their own, on a timeout or a heartbeat). Payloads sent
while a round trip is under way are coalesced into the next one (``SELECT pg_notify(…) FROM
unnest(…)``), optionally paced (at most one round per ``min_interval``, so that frequent
wake-ups do not become a NOTIFY storm); ``send(…, urgent=True)`` skips the pacing. A round that
fails is dropped and logged; the connection is opened again for the next one.

The channel name is a plain identifier, one per schema (:func:`schema_channel`): deployments
sharing a database do not wake each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import func, select

from herald.adapters.store.database import Database

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def database_dsn(db: Database) -> str:
    """The libpq connection string of ``db`` (psycopg's own connections, outside the pool)."""
    return db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def schema_channel(db: Database, base: str) -> str:
    """``base`` in the public schema, ``base_<schema>`` in another (at most 63 characters)."""
    schema = await db.run(lambda c: c.execute(select(func.current_schema())).scalar())
    if schema and schema != "public":
        return (base + "_" + re.sub(r"[^a-z0-9_]", "_", str(schema).lower()))[:63]
    return base


class PgChannel:
    """Listen on ``channel`` (every payload to ``on_payload``; ``None`` after each (re)connect)
    and send payloads to it, coalesced. ``kind`` names its tasks (``herald-KIND-listen``,
    ``herald-KIND-notify``) and its log events (``KIND.listen_lost``, ``KIND.notify_failed``).
    ``shape`` may rewrite a round's pending payloads before they are sent (drop what another
    payload of the round already says)."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_payload: Callable[[str | None], None],
        *,
        kind: str,
        log: Any,  # a structlog logger
        min_interval: float = 0.0,
        shape: Callable[[set[str]], set[str]] | None = None,
    ) -> None:
        if not _IDENT.match(channel):
            raise ValueError(f"not a plain PostgreSQL identifier: {channel!r}")
        self.dsn = dsn
        self.channel = channel
        self.on_payload = on_payload
        self.kind = kind
        self.log = log
        self.min_interval = min_interval
        self.shape = shape
        self.listening = asyncio.Event()
        self.closed = False
        self._pending: set[str] = set()
        self._sender: psycopg.AsyncConnection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._pacing = False  # the flusher is only sleeping between two rounds

    async def start(self, timeout: float = 5.0) -> None:
        """Start listening; wait (up to ``timeout``) until the LISTEN is in place."""
        self._listener = asyncio.create_task(self._listen(), name=f"herald-{self.kind}-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout)

    async def close(self) -> None:
        # A wake-up sent just before closing still goes out (``herald dead-letters replay``
        # wakes the running herald's senders, then exits): the flush under way ends first.
        flusher = self._flusher
        if flusher is not None and not flusher.done() and (self._pending or not self._pacing):
            await asyncio.wait({flusher}, timeout=1.0)
        self.closed = True
        for task in (self._listener, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sender is not None:
            await self._sender.close()
            self._sender = None

    # Sending ---------------------------------------------------------------------------------
    def send(self, payload: str, *, urgent: bool = False) -> None:
        """Notify ``payload`` with the next round; ``urgent``: a round now, not after the pacing.
        Outside the event loop (or once closed) nothing is sent."""
        if self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # woken from outside the event loop: the local wake-up is enough
            return
        self._pending.add(payload)
        if urgent and self._flusher is not None and not self._flusher.done() and self._pacing:
            # Pacing holds wake-ups together; an urgent one does not wait for it: its own round
            # trip now.
            self._flusher.cancel()
            self._flusher = None
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name=f"herald-{self.kind}-notify")

    async def _flush(self) -> None:
        while self._pending and not self.closed:
            batch, self._pending = self._pending, set()
            if self.shape is not None:
                batch = self.shape(batch)
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                await self._sender.execute(
                    "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (self.channel, sorted(batch))
                )
            except (psycopg.Error, OSError) as exc:
                self.log.warning(f"{self.kind}.notify_failed", error=type(exc).__name__)
                if self._sender is not None:
                    await self._sender.close()
                    self._sender = None
                return  # best effort: the receivers look on their own
            if self.min_interval > 0:
                self._pacing = True
                try:
                    await asyncio.sleep(self.min_interval)
                finally:
                    self._pacing = False

    # Listening -------------------------------------------------------------------------------
    async def _listen(self) -> None:
        delay = 0.2
        while not self.closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    delay = 0.2
                    self.on_payload(None)  # whatever was sent while nobody listened
                    async for note in conn.notifies():
                        self.on_payload(note.payload)
                finally:
                    self.listening.clear()
                    await conn.close()
            except (psycopg.Error, OSError) as exc:
                self.log.warning(f"{self.kind}.listen_lost", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
