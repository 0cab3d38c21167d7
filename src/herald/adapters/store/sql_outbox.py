"""Store methods for broker queues and leader election (mixed into SqlStore).

**Transactional outbox.** With ``SqlStore(outbox=True)`` (bootstrap sets it when ``queue.url`` is
``amqp://``), every transaction that makes a delivery claimable (status ``queued`` or
``retrying``) also writes an ``outbox`` row naming it, its channel, its lane and its due time.
The relay (:mod:`herald.adapters.queue.outbox_relay`) publishes due rows to the broker after
commit and deletes them once the broker confirmed, so a broker outage never loses an accepted
notification and never blocks the ``202``. Writers call :func:`add_outbox` inside their own
transaction; with the flag off nothing is written and nothing costs more.

**Claims by id.** A worker that took delivery ids from the broker claims them here with the same
semantics as the ``sql`` queue's claim (queued/retrying, due, to ``sending`` under a lease);
whatever is no longer claimable (sent, cancelled, claimed through a duplicate message) is left
alone and its message is simply acknowledged.

**Named leases.** ``acquire_or_renew`` is one ``INSERT … ON CONFLICT DO UPDATE … WHERE`` (the
lease is free, expired, or already ours), atomic on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)

from herald.adapters.store import pg_batch
from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _delivery
from herald.domain.models import Delivery, DeliveryStatus, Priority
from herald.ports import NamedLease, OutboxItem

S = DeliveryStatus
CLAIMABLE = (S.QUEUED.value, S.RETRYING.value)
_CHUNK = 500


def add_outbox(c: Connection, rows: Iterable[tuple[str, str, int, float]], now: float) -> None:
    """Write outbox rows ``(delivery_id, channel, priority rank, due_at)`` in ``c``'s transaction."""
    values = [
        {"delivery_id": i, "channel": ch, "priority": int(p), "due_at": float(due), "created_at": now}
        for i, ch, p, due in rows
    ]
    if values and c.dialect.name == "postgresql":
        pg_batch.INSERT_OUTBOX.execute(c, values)
    elif values:
        c.execute(insert(t.outbox), values)


_O, _D = t.outbox, t.deliveries
_LEASE_OUTBOX = pg_batch.per_dialect(
    lambda pg: update(_O).where(pg_batch.ids_in(_O.c.id, pg)).values(due_at=bindparam("b_due"))
)
_DELETE_OUTBOX = pg_batch.per_dialect(lambda pg: delete(_O).where(pg_batch.ids_in(_O.c.id, pg)))


# One statement: the row lock and the re-checked WHERE (PostgreSQL re-evaluates it on a row a
# concurrent claimer just committed) give each delivery to one claimer. ``status || ''`` keeps
# the planner on the primary key: with the status index it visits every queued delivery, and
# it chose that (statistics of a fresh or calm table say queued rows are rare) in the
# scale-out drain: 10 ms a claim, 24 s of PostgreSQL's 32.
def take_by_ids(pg: bool, *where: Any) -> Any:
    """The claim of a list of delivery ids (``b_ids``) still claimable, to ``sending`` under the
    lease of ``b_owner`` until ``b_until`` at ``b_now``: this store's claim by id and the ``sql``
    queue's second step on PostgreSQL."""
    return (
        update(_D)
        .where(pg_batch.ids_in(_D.c.id, pg), (_D.c.status + literal("")).in_(CLAIMABLE), *where)
        .values(
            status=S.SENDING.value,
            lease_owner=bindparam("b_owner"),
            lease_until=bindparam("b_until"),
            sending_at=bindparam("b_now"),
            updated_at=bindparam("b_now"),
        )
        .returning(*_D.c)
    )


_CLAIM_IDS = pg_batch.per_dialect(lambda pg: take_by_ids(pg, _D.c.due_at <= bindparam("b_due")))
_EXTEND_LEASES = pg_batch.per_dialect(
    lambda pg: (
        update(_D)
        .where(
            pg_batch.ids_in(_D.c.id, pg),
            _D.c.status == S.SENDING.value,
            _D.c.lease_owner == bindparam("b_owner"),
        )
        .values(lease_until=bindparam("b_until"))
    )
)


# The earliest due row: one probe of ix_outbox_due per lane. ``min(due_at)`` over the table is a
# scan (the index leads with the lane), run after every relay pass: it was 8% of PostgreSQL's
# time in the scale-out drain.
_NEXT_DUE_BY_LANE = union_all(
    *(
        select(
            select(_O.c.due_at)
            .where(_O.c.priority == rank)
            .order_by(_O.c.due_at)
            .limit(1)
            .scalar_subquery()
            .label("due")
        )
        for rank in sorted(p.rank for p in Priority)
    )
).subquery()
_NEXT_DUE = select(func.min(_NEXT_DUE_BY_LANE.c.due))
_NEXT_DUE_OF_LANE = (
    select(_O.c.due_at).where(_O.c.priority == bindparam("b_rank")).order_by(_O.c.due_at).limit(1)
)


class SqlOutboxMixin:
    db: Database
    outbox: bool
    _ins: Any

    # Outbox ----------------------------------------------------------------------------------
    async def claim_outbox(
        self, *, limit: int, now: float, lease: float, ranks: Sequence[int] | None = None
    ) -> list[OutboxItem]:
        o = t.outbox
        pg = self.db.dialect == "postgresql"
        cols = (o.c.id, o.c.delivery_id, o.c.channel, o.c.priority, o.c.due_at)

        def op(c: Connection) -> list[OutboxItem]:
            rows: list[Any]
            if ranks is None:
                # Priority first (ix_outbox_due): critical ahead of a released low backlog.
                q = select(*cols).where(o.c.due_at <= now).order_by(o.c.priority, o.c.due_at, o.c.id)
                q = q.limit(limit)
                if pg:
                    # Many relays: each takes rows no other relay holds; the lease below then
                    # hides them until published (or until the lease runs out, if it dies).
                    q = q.with_for_update(skip_locked=True)
                rows = list(c.execute(q))
            else:
                # Some lanes only: one ordered probe of ix_outbox_due per lane. A filter on the
                # lane in one ordered scan would walk every row of the other lanes (a released
                # backlog of 100,000 low rows, for a relay of the critical lanes) to find none.
                q = (
                    select(*cols)
                    .where(o.c.priority == bindparam("b_rank"), o.c.due_at <= now)
                    .order_by(o.c.due_at, o.c.id)
                    .limit(bindparam("b_limit"))
                )
                if pg:
                    q = q.with_for_update(skip_locked=True)
                rows = []
                for rank in sorted(ranks):
                    rows.extend(c.execute(q, {"b_rank": rank, "b_limit": limit - len(rows)}))
                    if len(rows) >= limit:
                        break
            if rows:
                c.execute(_LEASE_OUTBOX[pg], {"b_ids": [r.id for r in rows], "b_due": now + lease})
            return [OutboxItem(r.id, r.delivery_id, r.channel, r.priority, r.due_at) for r in rows]

        return await self.db.run(op)

    async def release_outbox(self, items: Sequence[OutboxItem]) -> None:
        o = t.outbox
        if not items:
            return
        stmt = update(o).where(o.c.id == bindparam("b_id")).values(due_at=bindparam("b_due"))
        params = [{"b_id": i.id, "b_due": i.due_at} for i in items]
        await self.db.run(lambda c: c.execute(stmt, params))

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        chosen = list(ids)
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> None:
            for i in range(0, len(chosen), _CHUNK):
                c.execute(_DELETE_OUTBOX[pg], {"b_ids": chosen[i : i + _CHUNK]})

        if chosen:
            await self.db.run(op)

    async def outbox_next_due(self, ranks: Sequence[int] | None = None) -> float | None:
        def op(c: Connection) -> float | None:
            if ranks is None:
                value = c.execute(_NEXT_DUE).scalar()
                return None if value is None else float(value)
            dues = [c.execute(_NEXT_DUE_OF_LANE, {"b_rank": r}).scalar() for r in ranks]
            return min((float(x) for x in dues if x is not None), default=None)

        return await self.db.run(op)

    # Claims by id ------------------------------------------------------------------------------
    async def claim_ids(
        self, delivery_ids: Sequence[str], *, owner: str, lease: float, now: float, early: float = 0.0
    ) -> list[Delivery]:

        d = t.deliveries
        ids = sorted(set(delivery_ids))  # sorted: concurrent claimers lock rows in one order
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> list[Delivery]:
            out: list[Delivery] = []
            for i in range(0, len(ids), _CHUNK):
                params = {
                    "b_ids": ids[i : i + _CHUNK],
                    "b_due": now + early,
                    "b_owner": owner,
                    "b_until": now + lease,
                    "b_now": now,
                }
                rows = c.execute(_CLAIM_IDS[pg], params).all()
                out.extend(_delivery(r) for r in rows)
            if len(out) < len(ids):
                # Claimable but not due: the message came ahead of its delivery's due time (a
                # stale duplicate from before a retry was scheduled, or a relay whose clock runs
                # ahead). Publish it again when due. Rare: only then this second statement.
                got = {x.id for x in out}
                rest = [i for i in ids if i not in got]
                not_yet: list[tuple[str, str, int, float]] = []
                for i in range(0, len(rest), _CHUNK):
                    not_yet.extend(
                        (r.id, r.channel, r.priority, r.due_at)
                        for r in c.execute(
                            select(d.c.id, d.c.channel, d.c.priority, d.c.due_at).where(
                                d.c.id.in_(rest[i : i + _CHUNK]),
                                d.c.status.in_(CLAIMABLE),
                                d.c.due_at > now + early,
                            )
                        )
                    )
                add_outbox(c, not_yet, now)
            out.sort(key=lambda x: (x.priority.rank, x.due_at))
            return out

        if not ids:
            return []
        return await self.db.run(op)

    async def requeue_ids(self, delivery_ids: Sequence[str], *, due_at: float, now: float) -> int:
        d = t.deliveries
        ids = sorted(set(delivery_ids))

        def op(c: Connection) -> int:
            rows: list[tuple[str, str, int, float]] = []
            for i in range(0, len(ids), _CHUNK):
                rows.extend(
                    (r.id, r.channel, r.priority, max(due_at, r.due_at))
                    for r in c.execute(
                        select(d.c.id, d.c.channel, d.c.priority, d.c.due_at).where(
                            d.c.id.in_(ids[i : i + _CHUNK]), d.c.status.in_(CLAIMABLE)
                        )
                    )
                )
            add_outbox(c, rows, now)
            return len(rows)

        if not ids:
            return 0
        return await self.db.run(op)

    async def extend_leases(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        ids = list(delivery_ids)
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> None:
            for i in range(0, len(ids), _CHUNK):
                c.execute(
                    _EXTEND_LEASES[pg], {"b_ids": ids[i : i + _CHUNK], "b_owner": owner, "b_until": until}
                )

        if ids:
            await self.db.run(op)

    # Named leases ------------------------------------------------------------------------------
    async def acquire_or_renew(self, name: str, owner: str, *, ttl: float, now: float) -> bool:
        lt = t.leases
        stmt = self._ins(lt).values(name=name, owner=owner, until=now + ttl, acquired_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[lt.c.name],
            set_={
                "owner": owner,
                "until": now + ttl,
                "acquired_at": case((lt.c.owner == owner, lt.c.acquired_at), else_=now),
            },
            # Free (expired) or ours; PostgreSQL evaluates this on the row as committed by a
            # concurrent contender, SQLite's single writer serialises: exactly one wins.
            where=or_(lt.c.until < now, lt.c.owner == owner),
        ).returning(lt.c.owner)
        row = await self.db.run(lambda c: c.execute(stmt).first())
        return row is not None

    async def get_lease(self, name: str) -> NamedLease | None:
        lt = t.leases

        def op(c: Connection) -> NamedLease | None:
            r = c.execute(select(lt).where(lt.c.name == name)).first()
            return None if r is None else NamedLease(r.name, r.owner, float(r.until), float(r.acquired_at))

        return await self.db.run(op)

    async def release_lease(self, name: str, owner: str) -> None:
        lt = t.leases
        await self.db.run(lambda c: c.execute(delete(lt).where(lt.c.name == name, lt.c.owner == owner)))
