"""The ``sql`` queue: the deliveries table is the queue.

A claim moves due deliveries of one channel to ``sending`` under a lease, one priority lane at
a time from the highest, so a backlog in a low lane never sits in front of a higher one. The
candidate query walks the ``(channel, status, priority, due_at)`` index in order and stops at
the limit. PostgreSQL adds ``FOR UPDATE SKIP LOCKED`` so that concurrent workers claim disjoint
rows; on SQLite the single writer serialises claims.

On PostgreSQL, :meth:`SqlQueue.wake` also reaches the other herald processes through
``LISTEN``/``NOTIFY`` (:mod:`herald.adapters.queue.pg_notify`), started by :meth:`start`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, select, update

from herald.adapters.queue.signals import Signals
from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.sql import _delivery
from herald.domain.models import Delivery, DeliveryStatus

if TYPE_CHECKING:
    from herald.adapters.queue.pg_notify import PgWakeups

_CLAIMABLE = (DeliveryStatus.QUEUED.value, DeliveryStatus.RETRYING.value)


class SqlQueue:
    def __init__(self, db: Database, signals: Signals | None = None, *, notify: bool = True) -> None:
        self.db = db
        self.signals = signals or Signals()
        self._notify = notify and db.dialect == "postgresql"
        self._wakeups: PgWakeups | None = None

    async def start(self) -> None:
        if self._notify and self._wakeups is None:
            from herald.adapters.queue.pg_notify import PgWakeups  # noqa: PLC0415 - needs psycopg

            dsn = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            # One NOTIFY channel per schema: deployments sharing a database do not wake each other.
            schema = await self.db.run(lambda c: c.execute(select(func.current_schema())).scalar())
            channel = "herald_queue"
            if schema and schema != "public":
                channel = (channel + "_" + re.sub(r"[^a-z0-9_]", "_", str(schema).lower()))[:63]
            self._wakeups = PgWakeups(dsn, self.signals, channel=channel)
            await self._wakeups.start()

    async def close(self) -> None:
        if self._wakeups is not None:
            await self._wakeups.close()
            self._wakeups = None

    async def claim(
        self, channel: str, *, owner: str, limit: int, max_rank: int, lease: float, now: float
    ) -> list[Delivery]:
        d = t.deliveries
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> list[Delivery]:
            ids: list[str] = []
            for rank in range(max_rank + 1):
                for status in _CLAIMABLE:
                    want = limit - len(ids)
                    if want <= 0:
                        break
                    q = (
                        select(d.c.id)
                        .where(
                            d.c.channel == channel,
                            d.c.status == status,
                            d.c.priority == rank,
                            d.c.due_at <= now,
                        )
                        .order_by(d.c.due_at)
                        .limit(want)
                    )
                    if pg:
                        q = q.with_for_update(skip_locked=True)
                    ids.extend(c.execute(q).scalars())
            if not ids:
                return []
            rows = c.execute(
                update(d)
                .where(d.c.id.in_(ids), d.c.status.in_(_CLAIMABLE))
                .values(
                    status=DeliveryStatus.SENDING.value,
                    lease_owner=owner,
                    lease_until=now + lease,
                    sending_at=now,
                    updated_at=now,
                )
                .returning(*d.c)
            ).all()
            out = [_delivery(r) for r in rows]
            out.sort(key=lambda x: (x.priority.rank, x.due_at))
            return out

        return await self.db.run(op)

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        d = t.deliveries
        ids = list(delivery_ids)
        if not ids:
            return

        def op(c: Connection) -> None:
            for i in range(0, len(ids), 500):
                c.execute(
                    update(d)
                    .where(
                        d.c.id.in_(ids[i : i + 500]),
                        d.c.status == DeliveryStatus.SENDING.value,
                        d.c.lease_owner == owner,
                    )
                    .values(lease_until=until)
                )

        await self.db.run(op)

    def wake(self, channel: str | None = None) -> None:
        self.signals.wake(channel)
        if self._wakeups is not None:
            self._wakeups.notify(channel)

    async def wait(self, channel: str, timeout: float) -> None:
        await self.signals.wait(channel, timeout)
