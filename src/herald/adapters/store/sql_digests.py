"""Store methods for digests (mixed into SqlStore).

A held item is a delivery with status ``scheduled`` and reason ``digest``; its ``due_at`` is
the digest time. ``promote_scheduled`` leaves these alone, so nothing but :meth:`save_digest`
(or :meth:`rehold_digest_items`) ever moves one: the worker never sends a held item by itself.
No schema change: status, reason, due_at and content are enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, func, literal_column, or_, select, update

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _delivery, _delivery_rows, _notification_body
from herald.adapters.store.sql_outbox import add_outbox
from herald.adapters.store.sql_rollups import count_changed
from herald.domain.models import Delivery, DeliveryStatus, Reason
from herald.domain.states import check_transition
from herald.ports import DigestGroup, DigestPlan, DigestSaved

S = DeliveryStatus
HELD_REASON = Reason.DIGEST.value  # the reason of a scheduled delivery held for a digest
_CHUNK = 500

# The claim index is (channel, status, priority, due_at): naming every channel and priority lets
# both SQLite and PostgreSQL walk it instead of scanning every scheduled delivery.


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# Scheduled deliveries, through ix_deliveries_scheduled: a literal, so that every plan (SQLite's,
# PostgreSQL's cached generic one) can use that partial index.
SCHEDULED = t.deliveries.c.status == literal_column(f"'{S.SCHEDULED.value}'")


def _held(d: Any, now: float) -> list[Any]:
    """WHERE clauses for the held items due at ``now`` and not expired."""
    return [
        SCHEDULED,  # ix_deliveries_scheduled: (status, due_at) of scheduled deliveries only
        d.c.due_at <= now,
        d.c.reason == HELD_REASON,
        or_(d.c.expires_at.is_(None), d.c.expires_at > now),
    ]


def _still_held(d: Any) -> list[Any]:
    return [d.c.status == S.SCHEDULED.value, d.c.reason == HELD_REASON]


class SqlDigestsMixin:
    db: Database
    outbox: bool
    _ins: Any

    async def due_digest_groups(self, *, now: float, limit: int) -> list[DigestGroup]:
        d = t.deliveries

        def op(c: Connection) -> list[DigestGroup]:
            rows = c.execute(
                select(d.c.user_id, d.c.category, d.c.channel)
                .where(*_held(d, now))
                .group_by(d.c.user_id, d.c.category, d.c.channel)
                .order_by(func.min(d.c.due_at), d.c.user_id, d.c.category, d.c.channel)
                .limit(limit)
            )
            return [DigestGroup(user_id=r.user_id, category=r.category, channel=r.channel) for r in rows]

        return await self.db.run(op)

    async def held_digest_items(
        self, user_id: str, category: str, channel: str, *, now: float
    ) -> list[Delivery]:

        d = t.deliveries

        def op(c: Connection) -> list[Delivery]:
            rows = c.execute(
                select(d)
                .where(*_held(d, now), d.c.user_id == user_id, d.c.category == category)
                .where(d.c.channel == channel)
                .order_by(d.c.created_at, d.c.id)
            )
            return [_delivery(r) for r in rows]

        return await self.db.run(op)

    async def save_digest(self, plan: DigestPlan, *, now: float) -> DigestSaved:

        n, d = t.notifications, t.deliveries
        check_transition(S.SCHEDULED, S.SKIPPED)
        ids = sorted(plan.item_contents)
        note = plan.notification

        def op(c: Connection) -> DigestSaved:
            # Lock the items (PostgreSQL; SQLite's write lock is taken at BEGIN). A concurrent
            # digest run waits here, then sees them no longer held and writes nothing.
            live: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                q = select(d.c.id).where(d.c.id.in_(ids[i : i + _CHUNK]), *_still_held(d)).order_by(d.c.id)
                if self.db.dialect == "postgresql":
                    q = q.with_for_update()
                live.update(c.execute(q).scalars())
            if len(live) != len(ids):
                return "changed"
            inserted = c.execute(
                self._ins(n)
                .values(
                    id=note.id,
                    status=note.status.value,
                    user_id=plan.delivery.user_id,
                    type="digest",
                    channel=plan.delivery.channel,
                    content=_notification_body(note),
                    template=note.template,
                    template_version=note.template_version,
                    category=note.category,
                    priority=note.priority.rank,
                    send_at=None,
                    expires_at=None,
                    dedup_key=None,
                    api_key_id=None,
                    topic=None,
                    recipients_total=1,
                    recipients_routed=1,
                    created_at=now,
                    routed_at=now,
                )
                .on_conflict_do_nothing()
                .returning(n.c.id)  # not rowcount: an INSERT's rowcount is -1 on psycopg
            ).first()
            if inserted is None:
                return "exists"  # this (user, category, channel, digest time) was digested already
            c.execute(self._ins(d).on_conflict_do_nothing(), _delivery_rows([plan.delivery], now))
            x = plan.delivery
            if self.outbox and x.status == S.QUEUED:  # a broker queue hears of it after commit
                add_outbox(c, [(x.id, x.channel, x.priority.rank, x.due_at)], now)
            c.execute(
                update(d)
                .where(d.c.id == bindparam("b_id"), *_still_held(d))
                .values(
                    status=S.SKIPPED.value,
                    reason=Reason.DIGESTED.value,
                    content=bindparam("b_content"),
                    updated_at=now,
                ),
                [{"b_id": i, "b_content": _dumps(plan.item_contents[i])} for i in ids],
            )
            count_changed(c, ids, ("skipped:digested",))  # the funnel, same transaction
            return "saved"

        return await self.db.run(op)

    async def rehold_digest_items(
        self, delivery_ids: Sequence[str], *, due_at: float | None, now: float
    ) -> int:
        d = t.deliveries
        ids = sorted(delivery_ids)
        values: dict[str, Any] = (
            {"due_at": due_at, "updated_at": now}
            if due_at is not None
            else {"reason": None, "due_at": now, "updated_at": now}  # promote_scheduled takes it
        )

        def op(c: Connection) -> int:
            changed = 0
            for i in range(0, len(ids), _CHUNK):
                changed += c.execute(
                    update(d).where(d.c.id.in_(ids[i : i + _CHUNK]), *_still_held(d)).values(**values)
                ).rowcount
            return changed

        return await self.db.run(op)
