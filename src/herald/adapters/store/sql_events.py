"""Store methods for routing rules, received events and topics (mixed into SqlStore)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Row, delete, func, select, update

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _delivery
from herald.domain.models import Delivery, DeliveryStatus, EventRecord, NotificationStatus, Topic
from herald.domain.rules import Rule, parse_rule


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def event_rows(events: Sequence[EventRecord]) -> list[dict[str, Any]]:
    return [
        {
            "id": e.id,
            "type": e.type,
            "status": e.status,
            "reason": e.reason,
            "detail": e.detail,
            "notification_id": e.notification_id,
            "body": _dumps(e.body),
            "source": e.source,
            "created_at": e.created_at,
        }
        for e in events
    ]


def reopen_for_fallback(c: Connection, notification_id: str) -> None:
    """Hand a notification back to the router, whose pass over failed deliveries at the end
    of routing moves the fallback chain on.

    A notification still being routed goes back too: its router's next save finds the lease
    gone and stops, and the next claim resumes where it stopped, then runs that pass.
    """
    n = t.notifications
    c.execute(
        update(n)
        .where(
            n.c.id == notification_id,
            n.c.status.in_([NotificationStatus.ROUTED.value, NotificationStatus.ROUTING.value]),
        )
        .values(status=NotificationStatus.ACCEPTED.value)
    )


def _event(row: Row[Any]) -> EventRecord:
    return EventRecord(
        id=row.id,
        type=row.type,
        status=row.status,
        body=orjson.loads(row.body),
        source=row.source,
        reason=row.reason,
        detail=row.detail,
        notification_id=row.notification_id,
        created_at=row.created_at,
    )


class SqlEventsMixin:
    db: Database
    _ins: Any

    # Rules --------------------------------------------------------------------------------------
    async def put_rule(self, rule: Rule, *, now: float) -> None:
        r = t.rules
        values = {"body": _dumps(rule.as_json()), "source": rule.source, "updated_at": now}

        def op(c: Connection) -> None:
            stmt = self._ins(r).values(event_type=rule.event_type, created_at=now, **values)
            c.execute(stmt.on_conflict_do_update(index_elements=[r.c.event_type], set_=values))

        await self.db.run(op)

    async def get_rule(self, event_type: str) -> Rule | None:
        r = t.rules
        row = await self.db.run(lambda c: c.execute(select(r).where(r.c.event_type == event_type)).first())
        if row is None:
            return None
        return parse_rule(row.event_type, orjson.loads(row.body), source=row.source)

    async def list_rules(self) -> list[Rule]:
        r = t.rules
        rows = await self.db.run(lambda c: list(c.execute(select(r).order_by(r.c.event_type))))
        return [parse_rule(row.event_type, orjson.loads(row.body), source=row.source) for row in rows]

    async def delete_rule(self, event_type: str) -> bool:
        r = t.rules
        return bool(
            await self.db.run(lambda c: c.execute(delete(r).where(r.c.event_type == event_type)).rowcount)
        )

    # Events ---------------------------------------------------------------------------------------
    async def get_event(self, event_id: str) -> EventRecord | None:
        e = t.events
        row = await self.db.run(lambda c: c.execute(select(e).where(e.c.id == event_id)).first())
        return _event(row) if row else None

    async def fallback_candidates(self, notification_id: str) -> list[Delivery]:
        """Every delivery of the recipients of ``notification_id`` that have a failed or dead one."""
        d = t.deliveries
        failed = select(d.c.user_id).where(
            d.c.notification_id == notification_id,
            d.c.status.in_([DeliveryStatus.FAILED.value, DeliveryStatus.DEAD.value]),
        )
        q = select(d).where(d.c.notification_id == notification_id, d.c.user_id.in_(failed))
        rows = await self.db.run(lambda c: list(c.execute(q)))

        return [_delivery(r) for r in rows]

    # Topics ---------------------------------------------------------------------------------------
    async def put_topic(self, topic: Topic) -> Topic:
        tp = t.topics
        values = {"name": topic.name, "data": _dumps(topic.data), "updated_at": topic.updated_at}

        def op(c: Connection) -> Topic:
            stmt = self._ins(tp).values(key=topic.key, created_at=topic.updated_at, **values)
            c.execute(stmt.on_conflict_do_update(index_elements=[tp.c.key], set_=values))
            found = self._topic(c, topic.key)
            assert found is not None
            return found

        return await self.db.run(op)

    def _topic(self, c: Connection, key: str) -> Topic | None:
        tp, ts = t.topics, t.topic_subscribers
        row = c.execute(select(tp).where(tp.c.key == key)).first()
        if row is None:
            return None
        count = c.execute(select(func.count()).select_from(ts).where(ts.c.topic == key)).scalar_one()
        return Topic(
            key=row.key,
            name=row.name,
            data=orjson.loads(row.data),
            subscribers=int(count),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def get_topic(self, key: str) -> Topic | None:
        return await self.db.run(lambda c: self._topic(c, key))

    async def has_topic(self, key: str) -> bool:
        tp = t.topics
        found = await self.db.run(lambda c: c.execute(select(tp.c.key).where(tp.c.key == key)).first())
        return found is not None

    async def delete_topic(self, key: str) -> bool:
        def op(c: Connection) -> bool:
            c.execute(delete(t.topic_subscribers).where(t.topic_subscribers.c.topic == key))
            return bool(c.execute(delete(t.topics).where(t.topics.c.key == key)).rowcount)

        return await self.db.run(op)

    async def add_subscribers(self, key: str, user_ids: Sequence[str], *, now: float) -> int:
        """Subscribe users (already subscribed ones are left as they are); returns how many were new."""
        ts = t.topic_subscribers
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> int:
            added = 0
            for i in range(0, len(ids), 1000):
                rows = [{"topic": key, "user_id": u, "created_at": now} for u in ids[i : i + 1000]]
                added += c.execute(self._ins(ts).values(rows).on_conflict_do_nothing()).rowcount
            return added

        return await self.db.run(op)

    async def remove_subscribers(self, key: str, user_ids: Sequence[str]) -> int:
        ts = t.topic_subscribers
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> int:
            removed = 0
            for i in range(0, len(ids), 1000):
                removed += c.execute(
                    delete(ts).where(ts.c.topic == key, ts.c.user_id.in_(ids[i : i + 1000]))
                ).rowcount
            return removed

        return await self.db.run(op)

    async def subscriber_page(self, key: str, *, after: str | None, limit: int) -> list[str]:
        """Subscribers in user id order after ``after``: fan-out streams through these pages."""
        ts = t.topic_subscribers
        q = select(ts.c.user_id).where(ts.c.topic == key)
        if after is not None:
            q = q.where(ts.c.user_id > after)
        q = q.order_by(ts.c.user_id).limit(limit)
        return await self.db.run(lambda c: list(c.execute(q).scalars()))

    async def count_subscribers(self, key: str) -> int:
        ts = t.topic_subscribers
        q = select(func.count()).select_from(ts).where(ts.c.topic == key)
        return int(await self.db.run(lambda c: c.execute(q).scalar_one()))
