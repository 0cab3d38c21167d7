"""Cross-process wake-ups for the queues on PostgreSQL: ``LISTEN``/``NOTIFY``.

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
also wake their own channel after every send and that must not become a NOTIFY storm; a
critical notification's wake-up of the routers is not paced. The listening, reconnecting and
sending are :class:`herald.adapters.pg_channel.PgChannel`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from herald.adapters.pg_channel import PgChannel, database_dsn, schema_channel
from herald.adapters.queue.signals import Signals
from herald.adapters.store.database import Database

log = structlog.get_logger("herald.queue")

ALL = "*"
ROUTE = "@route"  # new notifications to route
ROUTE_URGENT = "@route!"  # ... and a critical one among them: no gathering


def _coalesce(batch: set[str]) -> set[str]:
    """'*' says every channel; '@route!' says '@route' too."""
    if ALL in batch:
        batch = {ALL} | (batch & {ROUTE, ROUTE_URGENT})
    if ROUTE_URGENT in batch:
        batch = batch - {ROUTE}
    return batch


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
        self.signals = signals
        self.on_route = on_route  # this process's routers, woken with urgent=True/False
        # A channel woken by another process (default: this process's signals for it).
        self.on_channel: Callable[[str | None], None] = on_channel or signals.wake
        self.pg = PgChannel(
            dsn, channel, self._received, kind="queue", log=log, min_interval=min_interval, shape=_coalesce
        )

    @property
    def channel(self) -> str:
        return self.pg.channel

    async def start(self, timeout: float = 5.0) -> None:
        """Start listening; wait (up to ``timeout``) until the LISTEN is in place."""
        await self.pg.start(timeout)

    async def close(self) -> None:
        await self.pg.close()

    def notify(self, channel: str | None) -> None:
        """Wake ``channel`` (None: every channel) in every process."""
        self.pg.send(channel or ALL)

    def notify_route(self, urgent: bool) -> None:
        """Wake the routers of every process (a critical notification: at once)."""
        self.pg.send(ROUTE_URGENT if urgent else ROUTE, urgent=urgent)

    def _received(self, payload: str | None) -> None:
        if payload is None:  # (re)connected: whatever was sent while nobody listened
            self.on_channel(None)
            if self.on_route is not None:
                self.on_route(False)  # likewise for routers
        elif payload.startswith(ROUTE):
            if self.on_route is not None:
                self.on_route(payload == ROUTE_URGENT)
        else:
            self.on_channel(None if payload == ALL else payload)


async def start_wakeups(
    db: Database,
    signals: Signals,
    on_route: Callable[[bool], None] | None = None,
    on_channel: Callable[[str | None], None] | None = None,
) -> PgWakeups:
    """Listen on the channel of ``db``'s schema (deployments sharing a database do not wake each
    other) and return the started :class:`PgWakeups`."""
    channel = await schema_channel(db, "herald_queue")
    wakeups = PgWakeups(database_dsn(db), signals, channel=channel, on_route=on_route, on_channel=on_channel)
    await wakeups.start()
    return wakeups
