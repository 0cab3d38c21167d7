"""The operator console's reads (services/console.py), kept out of sql.py.

Every query here is bounded by an index, so a page costs the same with a thousand deliveries
or a million:

* time ranges are id ranges: ids are 48 bits of milliseconds then randomness
  (``domain.models.new_id``), so "created in the last hour" is a range of the primary key;
* dead and failed deliveries come from partial indexes (``ix_deliveries_dead``/``_failed``,
  migration 0008), named by a literal status so every plan (SQLite's, PostgreSQL's cached
  generic one) can use them;
* search by template walks ``ix_notifications_template`` a chunk of notifications at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, func, literal_column, select, text

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _attempt, _delivery
from herald.domain.models import ALL_CHANNELS, Attempt, Delivery, DeliveryStatus
from herald.ports_console import BucketCount, SearchQuery

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_D, _N, _A = t.deliveries, t.notifications, t.attempts
# Statuses with a partial index of their own (migration 0008).
INDEXED_STATUSES = (DeliveryStatus.DEAD.value, DeliveryStatus.FAILED.value)


def id_bound(prefix: str, ts: float) -> str:
    """The smallest id of ``prefix`` made at or after epoch second ``ts`` (see ``new_id``)."""
    value = max(0, int(ts * 1000)) << 80
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "_" + "".join(reversed(chars))


# Statuses most deliveries end in: found fastest by walking the primary key newest first.
_S = DeliveryStatus
COMMON_STATUSES = tuple(s.value for s in (_S.SENT, _S.DELIVERED, _S.READ, _S.SKIPPED))
CHANNELS = tuple(ch.value for ch in ALL_CHANNELS)
_WAITING = (DeliveryStatus.QUEUED.value, DeliveryStatus.RETRYING.value)


def _status_is(status: str) -> Any:
    # A literal (not a bound parameter) so that the partial index applies in every plan.
    if status not in INDEXED_STATUSES:
        return _D.c.status == status
    return _D.c.status == literal_column(f"'{status}'")


class SqlConsoleReads:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def bucket_counts(self, ranges: Sequence[tuple[float, float]]) -> list[list[BucketCount]]:
        """Deliveries created in each ``[start, end)`` range, per channel and current status, with
        how many of them were sent, delivered and read (the funnel). One id range each."""
        q = select(
            _D.c.channel,
            _D.c.status,
            func.count(),
            func.count(_D.c.sent_at),
            func.count(_D.c.delivered_at),
            func.count(_D.c.read_at),
        ).group_by(_D.c.channel, _D.c.status)

        def op(c: Connection) -> list[list[BucketCount]]:
            out: list[list[BucketCount]] = []
            for start, end in ranges:
                rows = c.execute(q.where(_D.c.id >= id_bound("dlv", start), _D.c.id < id_bound("dlv", end)))
                out.append(
                    [BucketCount(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]
                )
            return out

        return await self.db.run(op)

    async def search(self, qry: SearchQuery) -> list[tuple[Delivery, str | None]]:
        """Deliveries matching every given filter, newest first, with their notification's
        template (or event type). At most ``limit``; the next page starts below the last id."""

        def op(c: Connection) -> list[tuple[Delivery, str | None]]:
            if qry.template is not None and qry.notification_id is None:
                found = self._by_template(c, qry)
            else:
                found = [_delivery(r) for r in c.execute(self._delivery_query(qry).limit(qry.limit))]
            types = self._types(c, {d.notification_id for d in found})
            out = [(d, types.get(d.notification_id)) for d in found]
            if qry.template is not None:  # with a notification id: that notification's, if its template
                out = [(d, ty) for d, ty in out if ty == qry.template]
            return out

        return await self.db.run(op)

    def _delivery_query(self, qry: SearchQuery, template_ids: Sequence[str] | None = None) -> Any:
        q = select(_D)
        sqlite = self.db.dialect == "sqlite"
        # SQLite has no statistics by default: tell it how to find a status. A common one by
        # walking ids newest first (unary + keeps it off the claim index, which would sort a
        # few hundred thousand rows); a rare one through the claim index (channel, status, ...),
        # every channel named when none is given; dead and failed through their own indexes.
        common = sqlite and qry.status in COMMON_STATUSES and qry.user_id is None and template_ids is None
        rare = False
        if common:
            q = q.where(literal_column("+deliveries.status") == qry.status)
            if qry.channel is not None:
                q = q.where(literal_column("+deliveries.channel") == qry.channel)
        elif (
            qry.status is not None
            and qry.status not in INDEXED_STATUSES
            and qry.channel is None
            and qry.user_id is None
            and template_ids is None
            and qry.notification_id is None
        ):
            q = q.where(_D.c.channel.in_(CHANNELS))
            rare = sqlite
        if qry.notification_id is not None:
            q = q.where(_D.c.notification_id == qry.notification_id)
        if template_ids is not None:
            q = q.where(_D.c.notification_id.in_(list(template_ids)))
        if qry.user_id is not None:
            q = q.where(_D.c.user_id == qry.user_id)
        if qry.status is not None and not common:
            q = q.where(_status_is(qry.status))
        if qry.channel is not None and not common:
            q = q.where(_D.c.channel == qry.channel)
        if qry.provider is not None:
            q = q.where(_D.c.provider == qry.provider)
        if qry.reason is not None:
            q = q.where(_D.c.reason == qry.reason)
        if qry.since is not None:
            q = q.where(_D.c.id >= id_bound("dlv", qry.since))
        if qry.until is not None:
            q = q.where(_D.c.id < id_bound("dlv", qry.until))
        if qry.cursor:
            q = q.where(_D.c.id < qry.cursor)
        if rare:  # an ordered walk of the ids would read every delivery to find a rare status
            return q.order_by(literal_column("+deliveries.id").desc())
        return q.order_by(_D.c.id.desc())

    def _by_template(self, c: Connection, qry: SearchQuery) -> list[Delivery]:
        # The template's notifications newest first, a chunk at a time (its index), then their
        # deliveries: a rare template costs its own notifications, a common one a chunk or two.
        assert qry.template is not None
        upper: str | None = None
        inclusive = True
        if qry.cursor:
            # Deliveries are made after their notification: none below the cursor belongs to a
            # notification made after the cursor's millisecond.
            upper = "ntf_" + qry.cursor.removeprefix("dlv_")
        if qry.until is not None:
            bound = id_bound("ntf", qry.until)
            upper = bound if upper is None else min(upper, bound)
        floor = id_bound("ntf", qry.since - 86_400) if qry.since is not None else None
        found: list[Delivery] = []
        chunk = max(qry.limit, 200)
        while len(found) < qry.limit:
            nq = select(_N.c.id).where(_N.c.template == qry.template)
            if upper is not None:
                nq = nq.where(_N.c.id <= upper if inclusive else _N.c.id < upper)
            if floor is not None:
                nq = nq.where(_N.c.id >= floor)
            ids = list(c.execute(nq.order_by(_N.c.id.desc()).limit(chunk)).scalars())
            if ids:
                rows = c.execute(self._delivery_query(qry, ids).limit(qry.limit - len(found)))
                found.extend(_delivery(r) for r in rows)
            if len(ids) < chunk:
                break
            upper, inclusive = ids[-1], False
        found.sort(key=lambda d: d.id, reverse=True)
        return found[: qry.limit]

    @staticmethod
    def _types(c: Connection, notification_ids: set[str]) -> dict[str, str | None]:
        if not notification_ids:
            return {}
        rows = c.execute(select(_N.c.id, _N.c.template, _N.c.type).where(_N.c.id.in_(list(notification_ids))))
        return {r[0]: r[1] or r[2] for r in rows}

    async def attempts(
        self, delivery_ids: Sequence[str], *, last_only: bool = False
    ) -> dict[str, list[Attempt]]:
        ids = list(delivery_ids)

        def op(c: Connection) -> dict[str, list[Attempt]]:
            out: dict[str, list[Attempt]] = {}
            for i in range(0, len(ids), 500):
                q = (
                    select(_A)
                    .where(_A.c.delivery_id.in_(ids[i : i + 500]))
                    .order_by(_A.c.delivery_id, _A.c.n)
                )
                for r in c.execute(q):
                    out.setdefault(r.delivery_id, []).append(_attempt(r))
            if last_only:
                return {k: v[-1:] for k, v in out.items()}
            return out

        return await self.db.run(op)

    async def count_matching(self, qry: SearchQuery, *, cap: int) -> int:
        """How many deliveries match (counted up to ``cap``, so a count stays bounded)."""

        def op(c: Connection) -> int:
            inner = self._delivery_query(qry).with_only_columns(_D.c.id).limit(cap).subquery()
            return int(c.execute(select(func.count()).select_from(inner)).scalar_one())

        return await self.db.run(op)

    async def matching_ids(self, qry: SearchQuery, *, cap: int) -> list[str]:
        def op(c: Connection) -> list[str]:
            return list(c.execute(self._delivery_query(qry).with_only_columns(_D.c.id).limit(cap)).scalars())

        return await self.db.run(op)

    async def status_total(self, status: str) -> int:
        """Deliveries in ``status`` now: only for the partially indexed ones (cheap)."""
        if status not in INDEXED_STATUSES:
            raise ValueError(f"{status} has no partial index")
        q = select(func.count()).select_from(_D).where(_status_is(status))
        return await self.db.run(lambda c: int(c.execute(q).scalar_one()))

    async def ambiguous_total(self) -> int:
        # Worded as ix_attempts_ambiguous's WHERE, so that its partial index applies.
        q = text("SELECT count(*) FROM attempts WHERE ambiguous = true")
        return await self.db.run(lambda c: int(c.execute(q).scalar_one()))

    async def queue_depth(self, channels: Sequence[str]) -> list[tuple[str, int, int]]:
        # Equality on (channel, status) for each pair: ranges of ix_deliveries_claim, counted in
        # the index, instead of one scan of every delivery for "status IN (queued, retrying)".
        q = (
            select(_D.c.priority, func.count())
            .where(_D.c.channel == bindparam("ch"), _D.c.status == bindparam("st"))
            .group_by(_D.c.priority)
        )

        both = (
            select(_D.c.channel, _D.c.priority, func.count())
            .where(_D.c.status.in_(_WAITING))
            .group_by(_D.c.channel, _D.c.priority)
        )

        def op(c: Connection) -> list[tuple[str, int, int]]:
            if self.db.dialect == "postgresql":  # one query: its planner ORs the two ranges
                return sorted((r[0], int(r[1]), int(r[2])) for r in c.execute(both))
            totals: dict[tuple[str, int], int] = {}
            for ch in channels:
                for st in _WAITING:
                    for rank, n in c.execute(q, {"ch": ch, "st": st}):
                        totals[(ch, int(rank))] = totals.get((ch, int(rank)), 0) + int(n)
            return [(ch, rank, n) for (ch, rank), n in sorted(totals.items())]

        return await self.db.run(op)

    async def templates(self) -> list[dict[str, Any]]:
        """Every template's latest version (deleted ones marked), by name."""
        tp = t.templates

        def op(c: Connection) -> list[dict[str, Any]]:
            latest = (
                select(tp.c.name, func.max(tp.c.version).label("version"), func.count().label("versions"))
                .group_by(tp.c.name)
                .subquery()
            )
            q = (
                select(tp, latest.c.versions)
                .join(latest, (tp.c.name == latest.c.name) & (tp.c.version == latest.c.version))
                .order_by(tp.c.name)
            )
            out = []
            for r in c.execute(q):
                row = dict(r._mapping)
                row["channels_list"] = sorted(orjson.loads(row["channels"]))
                row["locales_list"] = sorted(orjson.loads(row["locales"]))
                out.append(row)
            return out

        return await self.db.run(op)

    async def template_versions(self, name: str) -> list[tuple[int, float, bool]]:
        tp = t.templates
        q = (
            select(tp.c.version, tp.c.created_at, tp.c.deleted)
            .where(tp.c.name == name)
            .order_by(tp.c.version.desc())
        )
        return await self.db.run(lambda c: [(int(r[0]), float(r[1]), bool(r[2])) for r in c.execute(q)])

    async def suppressions(self, addresses: Sequence[tuple[str, str]]) -> list[tuple[str, str, str, float]]:
        s = t.suppressions

        def op(c: Connection) -> list[tuple[str, str, str, float]]:
            out: list[tuple[str, str, str, float]] = []
            for channel, address in addresses:
                row = c.execute(select(s).where(s.c.channel == channel, s.c.address == address)).first()
                if row is not None:
                    out.append((row.channel, row.address, row.reason, float(row.created_at)))
            return out

        return await self.db.run(op)

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        dv = t.devices
        q = select(dv).where(dv.c.user_id == user_id).order_by(dv.c.created_at)
        return await self.db.run(lambda c: [dict(r._mapping) for r in c.execute(q)])

    async def topics(self, limit: int = 200) -> list[dict[str, Any]]:
        tp, sub = t.topics, t.topic_subscribers

        def op(c: Connection) -> list[dict[str, Any]]:
            out = []
            for r in c.execute(select(tp).order_by(tp.c.key).limit(limit)):
                n = c.execute(select(func.count()).select_from(sub).where(sub.c.topic == r.key)).scalar_one()
                out.append({**dict(r._mapping), "subscribers": int(n)})
            return out

        return await self.db.run(op)

    async def broadcasts(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest topic sends with their fan-out progress (``ix_notifications_topic``)."""
        q = (
            select(
                _N.c.id,
                _N.c.topic,
                _N.c.status,
                _N.c.template,
                _N.c.type,
                _N.c.recipients_total,
                _N.c.recipients_routed,
                _N.c.created_at,
            )
            .where(_N.c.topic.is_not(None))
            .order_by(_N.c.topic, _N.c.id.desc())
        )

        def op(c: Connection) -> list[dict[str, Any]]:
            rows = [dict(r._mapping) for r in c.execute(q.limit(limit))]
            rows.sort(key=lambda r: r["id"], reverse=True)
            return rows

        return await self.db.run(op)
