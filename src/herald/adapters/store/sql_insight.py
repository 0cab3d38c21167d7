"""Store readings for the metrics endpoint (mixed into SqlStore): how old the oldest waiting
delivery of each lane is, how far routing is behind what was accepted, and the counts of
deliveries by channel, status and provider."""

from __future__ import annotations

from sqlalchemy import Connection, func, or_, select

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

    async def delivery_counts(self, *, since: float | None = None) -> list[tuple[str, str, str | None, int]]:
        d = t.deliveries

        def op(c: Connection) -> list[tuple[str, str, str | None, int]]:
            q = select(d.c.channel, d.c.status, d.c.provider, func.count()).group_by(
                d.c.channel, d.c.status, d.c.provider
            )
            if since is not None:
                q = q.where(d.c.created_at >= since)
            return [(r[0], r[1], r[2], int(r[3])) for r in c.execute(q)]

        return await self.db.run(op)

    async def queue_depth(self) -> list[tuple[str, int, int]]:
        d = t.deliveries

        def op(c: Connection) -> list[tuple[str, int, int]]:
            q = (
                select(d.c.channel, d.c.priority, func.count())
                .where(or_(d.c.status == S.QUEUED.value, d.c.status == S.RETRYING.value))
                .group_by(d.c.channel, d.c.priority)
            )
            return [(r[0], int(r[1]), int(r[2])) for r in c.execute(q)]

        return await self.db.run(op)

    async def ambiguous_count(self) -> int:
        a = t.attempts
        return await self.db.run(
            lambda c: int(
                c.execute(select(func.count()).select_from(a).where(a.c.ambiguous.is_(True))).scalar_one()
            )
        )
