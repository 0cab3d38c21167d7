"""Opens and clicks recorded on deliveries, counted in the funnel (mixed into SqlStore).

One transaction per event: the event row (first time inserted, later bumped), the funnel's
counts (a delivery's first human open, its first human click, every click; machine ones apart),
and for a human event the delivery moved on to ``read``, its furthest state.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select, text, update

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _delivery
from herald.adapters.store.sql_rollups import Tally, bump, templates_of
from herald.domain.models import DeliveryStatus
from herald.ports import Engagement, EngagementEvent

S = DeliveryStatus
_INSERT = (
    "INSERT INTO delivery_events (delivery_id, kind, link, machine, why, url, source, user_agent, at, "
    "last_at, count) VALUES (:delivery_id, :kind, :link, :machine, :why, :url, :source, :user_agent, "
    ":at, :at, 1) ON CONFLICT (delivery_id, kind, link, machine) "
)
_UPSERT = text(
    _INSERT + "DO UPDATE SET count = delivery_events.count + 1, last_at = excluded.last_at RETURNING count"
)
_INSERT_NEW = text(_INSERT + "DO NOTHING RETURNING count")
_READABLE = (S.SENT.value, S.DELIVERED.value)


class SqlEngagementMixin:
    db: Database

    async def record_engagement(self, event: EngagementEvent) -> Engagement | None:
        d, e = t.deliveries, t.delivery_events

        def upsert(c: Connection, kind: str, link: int, url: str | None, *, repeat: bool = True) -> bool:
            """Record the event; True when it is the first of its kind. ``repeat``: a repeat
            bumps the count (False: an implied event, recorded only if absent)."""
            params = {
                "delivery_id": event.delivery_id,
                "kind": kind,
                "link": link,
                "machine": event.machine,
                "why": event.why,
                "url": url,
                "source": event.source,
                "user_agent": (event.user_agent or "")[:256] or None,
                "at": event.at,
            }
            count = c.execute(_UPSERT if repeat else _INSERT_NEW, params).scalar()
            return count is not None and int(count) == 1

        def op(c: Connection) -> Engagement | None:
            row = c.execute(select(d).where(d.c.id == event.delivery_id)).first()
            if row is None:
                return None
            suffix = "_machine" if event.machine else ""
            counted: list[str] = []
            if event.kind == "opened":
                if upsert(c, "opened", -1, None):
                    counted.append("opened" + suffix)
            else:
                first_click = not c.execute(
                    select(func.count())
                    .select_from(e)
                    .where(
                        e.c.delivery_id == event.delivery_id,
                        e.c.kind == "clicked",
                        e.c.machine == event.machine,
                    )
                ).scalar_one()
                upsert(c, "clicked", event.link, event.url)
                counted.append("clicks" + suffix)
                if first_click:
                    counted.append("clicked" + suffix)
                # A person's click is an open, whether or not their client showed the pixel
                # (a scanner's click is not: it opened nothing).
                if not event.machine and upsert(c, "opened", -1, None, repeat=False):
                    counted.append("opened")
            moved = False
            if not event.machine and row.status in _READABLE:
                moved = bool(
                    c.execute(
                        update(d)
                        .where(d.c.id == event.delivery_id, d.c.status.in_(_READABLE))
                        .values(status=S.READ.value, read_at=event.at, updated_at=event.at)
                    ).rowcount
                )
            if counted:
                tally = Tally()
                template = templates_of(c, [row.notification_id]).get(row.notification_id)
                tally.add(row.created_at, template, row.category, row.channel, row.provider, counted)
                bump(c, tally)
            after = _delivery(c.execute(select(d).where(d.c.id == event.delivery_id)).one())
            return Engagement(delivery=after, counted=tuple(counted), moved=moved)

        return await self.db.run(op)

    async def list_engagement(self, delivery_id: str) -> list[dict[str, object]]:
        e = t.delivery_events

        def op(c: Connection) -> list[dict[str, object]]:
            q = select(e).where(e.c.delivery_id == delivery_id).order_by(e.c.at, e.c.kind.desc(), e.c.link)
            return [
                {
                    "event": r.kind,
                    "at": r.at,
                    "last_at": r.last_at,
                    "count": r.count,
                    "machine": bool(r.machine),
                    "why": r.why,
                    "link": None if r.link < 0 else r.link,
                    "url": r.url,
                    "source": r.source,
                }
                for r in c.execute(q)
            ]

        return await self.db.run(op)
