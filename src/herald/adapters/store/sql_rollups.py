"""Funnel rollups: counts bumped in the transaction of the change they count.

Callers gather a batch's counts in a :class:`Tally` (a result batch of 500 sends of one
template is one row: ``sent`` +500), then :func:`bump` writes them with one upsert statement,
last in the transaction, keys in sorted order: two writers never wait on each other's rows in
opposite orders (no deadlock on PostgreSQL), and a rollup row is locked only from there to the
commit. SQLite runs it through ``sqlite3`` directly (one ``executemany``), PostgreSQL as one
``unnest`` statement.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, text

from herald.adapters.store import pg_batch, sqlite_hot
from herald.adapters.store import schema as t
from herald.domain.funnel import DAY, HOUR, NONE, bucket_of

Key = tuple[int, int, str, str, str, str, str]  # size, bucket, template, category, channel, provider, metric


class Tally(collections.Counter[Key]):
    """Counts of one transaction, by rollup key."""

    def add(
        self,
        created_at: float,
        template: str | None,
        category: str,
        channel: str,
        provider: str | None,
        metrics: Iterable[str],
        n: int = 1,
    ) -> None:
        hour, day = bucket_of(created_at, HOUR), bucket_of(created_at, DAY)
        rest = (template or NONE, category, channel, provider or NONE)
        for metric in metrics:
            self[(HOUR, hour, *rest, metric)] += n
            self[(DAY, day, *rest, metric)] += n


def bump(c: Connection, tally: Tally) -> None:
    """Add ``tally`` to the rollups (in ``c``'s transaction)."""
    rows = [(*key, n) for key, n in sorted(tally.items()) if n]
    if not rows:
        return
    # Each database's fast path (hot.bump_rollups is the reference).
    (pg_batch if c.dialect.name == "postgresql" else sqlite_hot).bump_rollups(c, rows)


_FACTS = (
    "SELECT d.id, d.created_at, n.template, d.category, d.channel, d.provider, d.status "
    "FROM deliveries AS d LEFT JOIN notifications AS n ON n.id = d.notification_id WHERE d.id IN ({ids})"
)


def delivery_facts(c: Connection, ids: Sequence[str]) -> dict[str, Any]:
    """{delivery id: row of (id, created_at, template, category, channel, provider, status)}:
    what a rollup key needs, for changes off the hot path."""
    out: dict[str, Any] = {}
    for i in range(0, len(ids), sqlite_hot.CHUNK):
        part = list(ids[i : i + sqlite_hot.CHUNK])
        names = {f"i{j}": v for j, v in enumerate(part)}
        sql = text(_FACTS.format(ids=", ".join(f":{k}" for k in names)))
        for row in c.execute(sql, names):
            out[row.id] = row
    return out


def templates_of(c: Connection, notification_ids: Sequence[str]) -> dict[str, str | None]:
    """{notification id: template name} (None: inline content)."""
    n = t.notifications
    out: dict[str, str | None] = {}
    ids = list(dict.fromkeys(notification_ids))
    for i in range(0, len(ids), sqlite_hot.CHUNK):
        part = ids[i : i + sqlite_hot.CHUNK]
        out.update(
            {
                r.id: r.template
                for r in c.execute(n.select().with_only_columns(n.c.id, n.c.template).where(n.c.id.in_(part)))
            }
        )
    return out


def count_changed(c: Connection, ids: Sequence[str], metrics: tuple[str, ...]) -> None:
    """Count ``metrics`` once for each of the deliveries ``ids`` (a bulk change, off the hot path)."""
    if not ids or not metrics:
        return
    tally = Tally()
    for row in delivery_facts(c, ids).values():
        tally.add(row.created_at, row.template, row.category, row.channel, row.provider, metrics)
    bump(c, tally)
