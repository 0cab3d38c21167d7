"""Timers in the SQL store (mixed into SqlStore): the scheduler's sweeps. Scheduled deliveries
come due, waiting ones expire, leases of senders that died are taken back, and the next time
anything is due.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, func, insert, select, update

from herald.adapters.store import pg_batch
from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.sql_digests import HELD_REASON, SCHEDULED
from herald.adapters.store.sql_outbox import add_outbox
from herald.adapters.store.sql_rollups import count_changed
from herald.domain.audience import SKIPPED_EVENT, skipped_fields
from herald.domain.models import DeliveryStatus, Outcome, Priority, Reason
from herald.ports import Promoted

log = structlog.get_logger("herald.store")

S = DeliveryStatus
_D = t.deliveries
RANKS = sorted(p.rank for p in Priority)
_NO_LIMIT = 2**31 - 1

PROMOTE_SCHEDULED = (
    update(_D)
    .where(
        SCHEDULED,
        _D.c.due_at <= bindparam("b_now"),
        # Held for a digest (sql_digests.py): only the digest step may move these.
        func.coalesce(_D.c.reason, "") != HELD_REASON,
    )
    .values(status=S.QUEUED.value, queued_at=bindparam("b_now"), updated_at=bindparam("b_now"))
    .returning(_D.c.id, _D.c.channel, _D.c.priority, _D.c.due_at)
)


def _pick_due_lane(pg: bool) -> Any:
    """A chunk of one lane's due scheduled deliveries, earliest first (ix_deliveries_due_lane).
    Picked first and updated by id: PostgreSQL may run an ``IN (SELECT … LIMIT … SKIP LOCKED)``
    subquery again while updating and so move more than the limit (seen in the contract test)."""
    pick = (
        select(_D.c.id)
        .where(
            SCHEDULED,
            _D.c.priority == bindparam("b_rank"),
            _D.c.due_at <= bindparam("b_now"),
            func.coalesce(_D.c.reason, "") != HELD_REASON,
        )
        .order_by(_D.c.due_at)
        .limit(bindparam("b_limit"))
    )
    return pick.with_for_update(skip_locked=True) if pg else pick


PICK_DUE_LANE = pg_batch.per_dialect(_pick_due_lane)
PROMOTE_IDS = pg_batch.per_dialect(
    lambda pg: (
        update(_D)
        .where(pg_batch.ids_in(_D.c.id, pg), SCHEDULED)
        .values(status=S.QUEUED.value, queued_at=bindparam("b_now"), updated_at=bindparam("b_now"))
        .returning(_D.c.id, _D.c.channel, _D.c.priority, _D.c.due_at)
    )
)


class SqlTimersMixin:
    db: Database
    outbox: bool
    _fast: Any  # sqlite_hot or pg_batch: the database's side of the hot operations (hot.py)

    async def promote_scheduled(
        self, *, now: float, limit: int | None = None, ranks: Sequence[int] | None = None
    ) -> Promoted:
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> Promoted:
            if limit is None and ranks is None:
                rows = list(c.execute(PROMOTE_SCHEDULED, {"b_now": now}))
            else:
                rows = []
                for rank in sorted(ranks) if ranks is not None else RANKS:
                    left = _NO_LIMIT if limit is None else limit - len(rows)
                    if left <= 0:
                        break
                    params = {"b_rank": rank, "b_now": now, "b_limit": left}
                    ids = list(c.execute(PICK_DUE_LANE[pg], params).scalars())
                    if ids:
                        rows.extend(c.execute(PROMOTE_IDS[pg], {"b_ids": ids, "b_now": now}))
            if self.outbox:
                add_outbox(c, [(r.id, r.channel, r.priority, r.due_at) for r in rows], now)
            return Promoted(sorted({r.channel for r in rows}), len(rows))

        return await self.db.run(op)

    async def expire_deliveries(self, *, now: float) -> int:
        expire = self._fast.expire

        def op(c: Connection) -> list[str]:
            ids = expire(c, now)
            count_changed(c, ids, ("skipped:expired",))  # the funnel, same transaction
            return list(ids)

        expired = await self.db.run(op)
        for i in expired:  # each skip told once, after its commit (herald.domain.audience)
            log.info(SKIPPED_EVENT, **skipped_fields(i, Reason.EXPIRED))
        return len(expired)

    async def reclaim_expired_leases(self, *, now: float) -> list[str]:
        d, a = t.deliveries, t.attempts

        def op(c: Connection) -> list[str]:
            rows = c.execute(
                update(d)
                .where(d.c.status == S.SENDING.value, d.c.lease_until < now)
                .values(
                    status=S.RETRYING.value,
                    due_at=now,
                    lease_owner=None,
                    lease_until=None,
                    retry_count=d.c.retry_count + 1,
                    budget_used=d.c.budget_used + 1,
                    updated_at=now,
                )
                .returning(d.c.id, d.c.channel, d.c.retry_count, d.c.provider, d.c.priority)
            ).all()
            if rows and self.outbox:
                add_outbox(c, [(r.id, r.channel, r.priority, now) for r in rows], now)
            if rows:
                c.execute(
                    insert(a),
                    [
                        {
                            "delivery_id": r.id,
                            "n": r.retry_count,
                            "at": now,
                            "provider": r.provider or "unknown",
                            "outcome": Outcome.LOST.value,
                            "code": None,
                            "detail": "worker lost its lease mid-send; the provider may have the message",
                            "latency_ms": None,
                            "ambiguous": True,
                        }
                        for r in rows
                    ],
                )
            return sorted({r.channel for r in rows})

        return await self.db.run(op)

    async def next_due(self, *, now: float) -> float | None:
        d = t.deliveries

        def op(c: Connection) -> float | None:
            best: float | None = None
            for status in (SCHEDULED, d.c.status == S.RETRYING.value):
                v = c.execute(select(func.min(d.c.due_at)).where(status, d.c.due_at > now)).scalar()
                if v is not None and (best is None or v < best):
                    best = float(v)
            lease = c.execute(select(func.min(d.c.lease_until)).where(d.c.status == S.SENDING.value)).scalar()
            if lease is not None and (best is None or lease < best):
                best = float(lease)
            return best

        return await self.db.run(op)
