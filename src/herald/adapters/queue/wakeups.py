"""Wake-ups across processes for the queues whose processes share PostgreSQL (``sql``, ``amqp``).

:class:`CrossProcessWakeups` gives a queue the :class:`herald.ports.RouterWakeups` half (wake
the routers of every other process, hear theirs) and the channel wake-ups that go with it, over
the ``LISTEN``/``NOTIFY`` channel of :mod:`herald.adapters.queue.pg_notify`. Until
:meth:`CrossProcessWakeups._start_wakeups` ran (SQLite: never) every one of them is local only.
This module needs no PostgreSQL driver: pg_notify is imported when the wake-ups start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from herald.adapters.queue.signals import Signals
from herald.adapters.store.database import Database

if TYPE_CHECKING:
    from herald.adapters.queue.pg_notify import PgWakeups


class CrossProcessWakeups:
    """Mixin of a queue: routers' and channels' wake-ups through PostgreSQL ``NOTIFY``."""

    _wakeups: PgWakeups | None = None
    _route_listeners: tuple[Callable[[bool], None], ...] = ()

    async def _start_wakeups(
        self, db: Database, signals: Signals, on_channel: Callable[[str | None], None] | None = None
    ) -> None:
        """Listen (once): a channel woken by another process wakes ``on_channel`` (default: the
        waiters of ``signals``); the routers woken by another process wake the route listeners."""
        if self._wakeups is None:
            from herald.adapters.queue.pg_notify import start_wakeups  # noqa: PLC0415 - needs psycopg

            self._wakeups = await start_wakeups(db, signals, self._route_woken, on_channel=on_channel)

    async def _close_wakeups(self) -> None:
        wakeups, self._wakeups = self._wakeups, None
        if wakeups is not None:
            await wakeups.close()

    def _notify_channel(self, channel: str | None) -> None:
        """Wake ``channel`` (None: every channel) in the other processes."""
        if self._wakeups is not None:
            self._wakeups.notify(channel)

    def wake_routers(self, urgent: bool) -> None:
        """New notifications for the routers of the other processes (PostgreSQL: NOTIFY)."""
        if self._wakeups is not None:
            self._wakeups.notify_route(urgent)

    def add_route_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(urgent)`` when another process asks routers to wake."""
        self._route_listeners = (*self._route_listeners, listener)

    def _route_woken(self, urgent: bool) -> None:
        for listener in self._route_listeners:
            listener(urgent)
