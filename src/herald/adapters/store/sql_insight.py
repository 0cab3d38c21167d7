"""Store readings for the metrics endpoint (mixed into SqlStore): how old the oldest waiting
delivery of each lane is, and how far routing is behind what was accepted."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.domain.models import DeliveryStatus, NotificationStatus

S = DeliveryStatus
_WAITING = (S.QUEUED.value, S.RETRYING.value)
_UNROUTED = (NotificationStatus.ACCEPTED.value, NotificationStatus.ROUTING.value)


class SqlInsightMixin:
    db: Database

    async def queue_ages(self, *, now: float) -> list[tuple[str, int, int, float]]:
        d = t.deliveries

        def op(c: Connection) -> list[tuple[str, int, int, float]]:
            # Waiting: queued or retrying; the age is that of the oldest one already due (a
            # retry due in five minutes is not late). One pass over the waiting rows, by the
            # claim index (channel, status, priority, due_at).
            due = func.min(d.c.due_at).filter(d.c.due_at <= now)
            q = (
                select(d.c.channel, d.c.priority, func.count(), due)
                .where(d.c.status.in_(_WAITING))
                .group_by(d.c.channel, d.c.priority)
            )
            return [
                (r[0], int(r[1]), int(r[2]), 0.0 if r[3] is None else max(0.0, now - float(r[3])))
                for r in c.execute(q)
            ]

        return await self.db.run(op)

    async def oldest_unrouted(self) -> float | None:
        n = t.notifications

        def op(c: Connection) -> float | None:
            best: float | None = None
            for status in _UNROUTED:  # one index range each (ix_notifications_route)
                v = c.execute(select(func.min(n.c.created_at)).where(n.c.status == status)).scalar()
                if v is not None and (best is None or v < best):
                    best = float(v)
            return best

        return await self.db.run(op)
