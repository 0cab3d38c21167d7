"""Dead letters with their history: every attempt and the last error, and their replay (mixed
into SqlStore).

A dead letter is a delivery in ``dead``. What an operator needs to decide on a replay is why
it died: the attempts (provider, outcome, code, detail) come with each listed delivery, read
in one query per page, and the list filters on the last attempt's code as well as on the
delivery's channel, provider and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, update

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _attempt, _delivery
from herald.adapters.store.sql_outbox import add_outbox
from herald.domain.models import Delivery, DeliveryStatus
from herald.ports import DeadLetterFilter

S = DeliveryStatus


def last_attempt_code() -> Any:
    """The code of a delivery's last attempt (a correlated scalar subquery on ``deliveries``)."""
    a, d = t.attempts, t.deliveries
    return (
        select(a.c.code)
        .where(a.c.delivery_id == d.c.id)
        .order_by(a.c.n.desc(), a.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


class SqlDeadLettersMixin:
    db: Database
    outbox: bool

    async def list_dead_letters(self, flt: DeadLetterFilter) -> list[Delivery]:
        d, a = t.deliveries, t.attempts

        def op(c: Connection) -> list[Delivery]:
            q = select(d).where(d.c.status == S.DEAD.value)
            if flt.channel:
                q = q.where(d.c.channel == flt.channel)
            if flt.provider:
                q = q.where(d.c.provider == flt.provider)
            if flt.reason:
                q = q.where(d.c.reason == flt.reason)
            if flt.code:
                q = q.where(last_attempt_code() == flt.code)
            if flt.since is not None:
                q = q.where(d.c.failed_at >= flt.since)
            if flt.until is not None:
                q = q.where(d.c.failed_at < flt.until)
            if flt.cursor:
                q = q.where(d.c.id < flt.cursor)
            out = [_delivery(r) for r in c.execute(q.order_by(d.c.id.desc()).limit(flt.limit))]
            by_id = {x.id: x for x in out}
            ids = list(by_id)
            for i in range(0, len(ids), 500):
                rows = c.execute(
                    select(a).where(a.c.delivery_id.in_(ids[i : i + 500])).order_by(a.c.n, a.c.id)
                )
                for row in rows:
                    by_id[row.delivery_id].attempts.append(_attempt(row))
            return out

        return await self.db.run(op)

    async def replay_dead_letters(self, delivery_ids: Sequence[str], *, now: float) -> list[Delivery]:
        d = t.deliveries
        ids = list(delivery_ids)

        def op(c: Connection) -> list[Delivery]:
            out: list[Delivery] = []
            for i in range(0, len(ids), 500):
                rows = c.execute(
                    update(d)
                    .where(d.c.id.in_(ids[i : i + 500]), d.c.status == S.DEAD.value)
                    .values(
                        status=S.QUEUED.value,
                        reason=None,
                        due_at=now,
                        queued_at=now,
                        updated_at=now,
                        failed_at=None,
                        budget_used=0,
                    )
                    .returning(*d.c)
                ).all()
                if self.outbox:
                    add_outbox(c, [(r.id, r.channel, r.priority, r.due_at) for r in rows], now)
                out.extend(_delivery(r) for r in rows)
            return out

        return await self.db.run(op)
