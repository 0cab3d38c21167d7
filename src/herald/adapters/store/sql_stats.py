"""The funnel read from its rollups (mixed into SqlStore): range scans of the rollup table's
primary key (size, bucket, …), summed per group, whatever the number of deliveries behind it.

Hour buckets read the hourly rows; day buckets the daily ones; a whole range without buckets
reads whole days from the daily rows and the hours at either end from the hourly ones.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Connection, func, literal, select

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.domain.funnel import DAY, HOUR
from herald.ports import FunnelQuery


def spans(q: FunnelQuery) -> list[tuple[int, float, float]]:
    """(rollup size, from, to) ranges of rows that cover the query exactly once."""
    lo = math.floor((q.since if q.since is not None else 0.0) / HOUR) * HOUR
    hi = q.until if q.until is not None else math.inf
    if q.bucket == "hour":
        return [(HOUR, lo, hi)]
    if q.bucket == "day":
        return [(DAY, math.floor(lo / DAY) * DAY, hi)]
    first_day = math.ceil(lo / DAY) * DAY
    last_day = hi if math.isinf(hi) else math.floor(hi / DAY) * DAY
    if first_day >= last_day:
        return [(HOUR, lo, hi)]
    out: list[tuple[int, float, float]] = [(DAY, first_day, last_day)]
    if lo < first_day:
        out.append((HOUR, lo, first_day))
    if last_day < hi:
        out.append((HOUR, last_day, hi))
    return out


class SqlStatsMixin:
    db: Database

    async def funnel_counts(self, q: FunnelQuery) -> list[tuple[Any, ...]]:
        r = t.delivery_rollups

        def op(c: Connection) -> list[tuple[Any, ...]]:
            dims = [r.c[name] for name in q.by]
            bucket: Any = literal(None) if q.bucket is None else r.c.bucket
            merged: dict[tuple[Any, ...], int] = {}
            for size, lo, hi in spans(q):
                stmt = select(*dims, bucket.label("b"), r.c.metric, func.sum(r.c["count"])).where(
                    r.c.size == size, r.c.bucket >= int(lo)
                )
                if not math.isinf(hi):
                    stmt = stmt.where(r.c.bucket < hi)
                for name, value in q.filters.items():
                    stmt = stmt.where(r.c[name] == value)
                groups = [*dims] + ([r.c.bucket] if q.bucket is not None else []) + [r.c.metric]
                for row in c.execute(stmt.group_by(*groups)):
                    key = tuple(row[:-1])
                    merged[key] = merged.get(key, 0) + int(row[-1])
            return [(*key, n) for key, n in merged.items()]

        return await self.db.run(op)
