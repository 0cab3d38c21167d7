"""The funnel read from its rollups (mixed into SqlStore): one range scan of the rollup
table's primary key (it leads with the hour), summed per group, whatever the number of
deliveries behind it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, literal, select

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.domain.funnel import BUCKETS, HOUR
from herald.ports import FunnelQuery


class SqlStatsMixin:
    db: Database

    async def funnel_counts(self, q: FunnelQuery) -> list[tuple[Any, ...]]:
        r = t.delivery_rollups

        def op(c: Connection) -> list[tuple[Any, ...]]:
            dims = [r.c[name] for name in q.by]
            if q.bucket is None:
                bucket: Any = literal(None)
            elif BUCKETS[q.bucket] == HOUR:
                bucket = r.c.bucket
            else:
                size = BUCKETS[q.bucket]
                bucket = (r.c.bucket // size) * size  # integer (floor) division on both engines
            stmt = select(*dims, bucket.label("b"), r.c.metric, func.sum(r.c["count"]))
            if q.since is not None:
                stmt = stmt.where(r.c.bucket >= int(q.since // HOUR) * HOUR)
            if q.until is not None:
                stmt = stmt.where(r.c.bucket < q.until)
            for name, value in q.filters.items():
                stmt = stmt.where(r.c[name] == value)
            groups = [*dims] + ([bucket] if q.bucket is not None else []) + [r.c.metric]
            stmt = stmt.group_by(*groups)
            return [tuple(row) for row in c.execute(stmt)]

        return await self.db.run(op)
