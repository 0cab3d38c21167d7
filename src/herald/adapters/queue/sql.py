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

from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Row, bindparam, select, update

from herald.adapters.queue.signals import Signals
from herald.adapters.queue.wakeups import CrossProcessWakeups
from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _delivery
from herald.adapters.store.sql_outbox import take_by_ids
from herald.domain.models import Delivery, DeliveryStatus

_CLAIMABLE = (DeliveryStatus.QUEUED.value, DeliveryStatus.RETRYING.value)

# Claims run for every few finished sends: their statements are built once, with bound
# parameters, so that SQLAlchemy compiles each once per process (building a select() per lane
# per claim cost ~20 % of the SQLite thread in the drain profile).
_D = t.deliveries
_CLAIM_LANE = (
    select(_D.c.id)
    .where(
        _D.c.channel == bindparam("b_channel"),
        _D.c.status == bindparam("b_status"),
        _D.c.priority == bindparam("b_rank"),
        _D.c.due_at <= bindparam("b_now"),
    )
    .order_by(_D.c.due_at)
    .limit(bindparam("b_limit"))
)
_CLAIM_LANE_PG = _CLAIM_LANE.with_for_update(skip_locked=True)
_CLAIM_TAKE = take_by_ids(pg=True)  # by primary key, never the status index (see sql_outbox)

# SQLite runs the same two statements on the driver connection itself: a claim comes every
# few sends, and SQLAlchemy's execution path (~30 us a statement here) was most of its cost;
# sqlite3 runs each in a few. The rows are the columns of ``deliveries`` in table order.
_COLUMNS = [col.name for col in _D.c]
_DeliveryRow = namedtuple("_DeliveryRow", _COLUMNS)  # type: ignore[misc]  # columns from the schema
_SQLITE_LANE = (
    "SELECT id FROM deliveries WHERE channel = ? AND status = ? AND priority = ? AND due_at <= ? "
    "ORDER BY due_at LIMIT ?"
)
# Column names come from the schema; every value is a ? parameter. ``+status`` keeps SQLite
# from planning the ids' lookup on ix_deliveries_lease (status first), which without ANALYZE
# statistics it prefers, and which walks every queued delivery: 135 ms a claim with 77,000
# queued, against well under a millisecond by primary key.
_SQLITE_TAKE = (
    "UPDATE deliveries SET status = 'sending', lease_owner = ?, lease_until = ?, sending_at = ?, "  # noqa: S608
    "updated_at = ? WHERE id IN ({marks}) AND +status IN ('queued', 'retrying') RETURNING "
    + ", ".join(_COLUMNS)
)


class SqlQueue(CrossProcessWakeups):
    def __init__(self, db: Database, signals: Signals | None = None, *, notify: bool = True) -> None:
        self.db = db
        self.signals = signals or Signals()
        self._notify = notify and db.dialect == "postgresql"
        self._wake_listeners: list[Callable[[str | None], None]] = []

    async def start(self) -> None:
        if self._notify:
            await self._start_wakeups(self.db, self.signals)

    async def close(self) -> None:
        await self._close_wakeups()

    async def claim(
        self,
        channel: str,
        *,
        owner: str,
        limit: int,
        max_rank: int,
        lease: float,
        now: float,
        min_rank: int = 0,
    ) -> list[Delivery]:
        ranks = range(min_rank, max_rank + 1)
        if self.db.is_sqlite:
            return await self.db.run(lambda c: _claim_sqlite(c, channel, owner, limit, ranks, lease, now))
        select_lane = _CLAIM_LANE_PG if self.db.dialect == "postgresql" else _CLAIM_LANE

        def op(c: Connection) -> list[Delivery]:
            ids: list[str] = []
            for rank in ranks:
                for status in _CLAIMABLE:
                    want = limit - len(ids)
                    if want <= 0:
                        break
                    lane = {"b_channel": channel, "b_status": status, "b_rank": rank, "b_now": now}
                    ids.extend(c.execute(select_lane, lane | {"b_limit": want}).scalars())
            if not ids:
                return []
            rows = c.execute(
                _CLAIM_TAKE, {"b_ids": ids, "b_owner": owner, "b_until": now + lease, "b_now": now}
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

    def add_wake_listener(self, listener: Callable[[str | None], None]) -> None:
        """Also call ``listener`` on every wake (worker children of ``herald serve``)."""
        self._wake_listeners.append(listener)

    def wake_local(self, channel: str) -> None:
        self.signals.wake(channel)

    def hand_over(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: the table is the queue, and the wake that comes with it claims them."""

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        self.signals.wake(channel, top_rank)
        self._notify_channel(channel)
        for listener in self._wake_listeners:
            listener(channel)

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        await self.signals.wait(channel, timeout, max_rank)


def _claim_sqlite(
    c: Connection, channel: str, owner: str, limit: int, ranks: range, lease: float, now: float
) -> list[Delivery]:
    """:meth:`SqlQueue.claim` on SQLite, inside the transaction ``c`` holds (BEGIN IMMEDIATE)."""
    raw = c.connection.driver_connection
    assert raw is not None  # a live connection inside a transaction
    ids: list[str] = []
    for rank in ranks:
        for status in _CLAIMABLE:
            want = limit - len(ids)
            if want <= 0:
                break
            ids.extend(row[0] for row in raw.execute(_SQLITE_LANE, (channel, status, rank, now, want)))
    if not ids:
        return []
    take = _SQLITE_TAKE.format(marks=",".join("?" * len(ids)))
    rows = raw.execute(take, (owner, now + lease, now, now, *ids)).fetchall()
    # _delivery reads the columns as attributes, which the named tuple has like a Row.
    out = [_delivery(cast("Row[Any]", _DeliveryRow._make(r))) for r in rows]
    out.sort(key=lambda x: (x.priority.rank, x.due_at))
    return out
