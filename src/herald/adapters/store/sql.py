"""The Store port on SQL (SQLite or PostgreSQL), through SQLAlchemy Core.

:class:`SqlStore` is composed of one mixin per role, each in its own module:

- ``sql_directory``: API keys, settings, users, devices, preferences, templates, suppressions
- ``sql_routing``: accepting notifications, the router's claim and writes, dedup, cancel
- ``sql_results``: results of sends, tracking, deliveries as the API reads them, the inbox
- ``sql_timers``: the scheduler's sweeps (scheduled, expired, lost leases, next due)
- ``sql_events`` (rules, events, topics), ``sql_digests``, ``sql_outbox`` (broker queues,
  named leases), ``sql_dead_letters``, ``sql_idempotency``, ``sql_listing``, ``sql_admin``,
  ``sql_engagement``, ``sql_insight`` and ``sql_stats`` (metrics and the funnel)

Row codecs are in ``rows``; the hot operations in ``hot`` (the reference, any dialect),
``sqlite_hot`` and ``pg_batch`` (each database's fast path).
"""

from __future__ import annotations

import math

from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite

from herald.adapters.store import pg_batch, sqlite_hot
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _notification
from herald.adapters.store.sql_admin import SqlAdminMixin
from herald.adapters.store.sql_dead_letters import SqlDeadLettersMixin
from herald.adapters.store.sql_digests import SqlDigestsMixin
from herald.adapters.store.sql_directory import SqlDirectoryMixin
from herald.adapters.store.sql_engagement import SqlEngagementMixin
from herald.adapters.store.sql_events import SqlEventsMixin
from herald.adapters.store.sql_idempotency import SqlIdempotencyMixin
from herald.adapters.store.sql_insight import SqlInsightMixin
from herald.adapters.store.sql_listing import SqlListingMixin
from herald.adapters.store.sql_outbox import SqlOutboxMixin
from herald.adapters.store.sql_results import SqlResultsMixin
from herald.adapters.store.sql_routing import SqlRoutingMixin
from herald.adapters.store.sql_stats import SqlStatsMixin
from herald.adapters.store.sql_timers import SqlTimersMixin

# Queue tables vacuumed by ``maintain`` once this many rows are dead (and a fifth of the live).
_MAINTAINED = {"outbox": 5_000, "deliveries": 50_000, "notifications": 50_000}
_DEAD_FRACTION = 0.2
_DEAD_ROWS = text(
    "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables "
    "WHERE schemaname = current_schema() AND relname = ANY(CAST(:tables AS text[]))"
)


class SqlStore(
    SqlDirectoryMixin,
    SqlRoutingMixin,
    SqlResultsMixin,
    SqlTimersMixin,
    SqlEventsMixin,
    SqlDigestsMixin,
    SqlOutboxMixin,
    SqlDeadLettersMixin,
    SqlInsightMixin,
    SqlEngagementMixin,
    SqlStatsMixin,
    SqlAdminMixin,
    SqlListingMixin,
    SqlIdempotencyMixin,
):
    """Store on SQLite or PostgreSQL. ``db`` is shared with the ``sql`` queue.

    ``outbox``: write an outbox row with every change that makes a delivery claimable, for a
    broker queue (see :mod:`herald.adapters.store.sql_outbox`). Off for the ``sql`` queue.
    """

    notification_from_row = staticmethod(_notification)

    def __init__(self, db: Database, *, outbox: bool = False) -> None:
        self.db = db
        self.outbox = outbox
        self._expired_routing_checked = -math.inf  # when claim_unrouted last looked for those
        self._inbox_listeners = []  # told of in-app items numbered (sql_results.on_inbox_numbered)
        if db.dialect == "postgresql":
            # Imported here: a command on SQLite (herald keys create) need not load it.
            from sqlalchemy.dialects import postgresql  # noqa: PLC0415

            self._ins = postgresql.insert
            self._fast = pg_batch
        else:
            self._ins = sqlite.insert
            self._fast = sqlite_hot

    async def start(self) -> None:
        await self.db.upgrade_async()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.run(lambda c: c.execute(select(1)).scalar())

    # Housekeeping ------------------------------------------------------------------------------
    async def maintain(self) -> list[str]:
        """PostgreSQL: ``VACUUM (ANALYZE)`` the queue tables whose dead rows passed a threshold.

        Every delivery leaves two or three dead row versions (routing, claim, result) and every
        outbox row one or two, and each claim walks the index entries of the dead ones until a
        vacuum removes them. PostgreSQL's autovacuum looks once a minute at best, and may be off
        (it was, on the machine of the benchmarks: 200,000 dead outbox rows under nine live ones,
        1.5 ms a relay pass). The scheduler calls this every few seconds; it costs one look at the
        table statistics when nothing is due.
        """
        if self.db.dialect != "postgresql":
            return []
        counts = await self.db.run(lambda c: c.execute(_DEAD_ROWS, {"tables": list(_MAINTAINED)}).all())
        due = [
            row.relname
            for row in counts
            if row.n_dead_tup >= max(_MAINTAINED[row.relname], _DEAD_FRACTION * row.n_live_tup)
        ]
        for table in due:
            await self.db.run_outside_transaction(f"VACUUM (ANALYZE) {table}")
        return due
