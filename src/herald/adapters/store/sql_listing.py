"""Listing notifications by what the API shows (mixed into SqlStore).

The API shows a routed notification as ``in_progress`` while any of its deliveries can still
change (pending, scheduled, queued, sending, retrying) and ``completed`` once none can; the
list filters by that same status, so ``?status=completed`` finds what the detail calls
completed. ``delivery_status`` finds notifications with at least one delivery in that status.
Lookups by notification walk ``uq_deliveries_recipient``, which leads with notification_id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, exists, select

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.domain.models import DeliveryStatus, Notification, NotificationStatus
from herald.domain.states import FINAL
from herald.ports import NotificationFilter

OPEN = sorted(s.value for s in DeliveryStatus if s not in FINAL)  # deliveries that can still change
IN_PROGRESS, COMPLETED = "in_progress", "completed"


class SqlListingMixin:
    db: Database

    @staticmethod
    def notification_from_row(row: Row[Any]) -> Notification:  # SqlStore's own row reader
        raise NotImplementedError

    async def list_notifications(self, flt: NotificationFilter) -> list[Notification]:
        n, d = t.notifications, t.deliveries
        q = select(n)
        if flt.user_id is not None or flt.channel is not None or flt.delivery_status is not None:
            sub = select(d.c.notification_id)
            if flt.user_id is not None:
                sub = sub.where(d.c.user_id == flt.user_id)
            if flt.channel is not None:
                sub = sub.where(d.c.channel == flt.channel)
            if flt.delivery_status is not None:
                sub = sub.where(d.c.status == flt.delivery_status)
            q = q.where(n.c.id.in_(sub))
        if flt.status in (IN_PROGRESS, COMPLETED):
            still_open = exists().where(d.c.notification_id == n.c.id, d.c.status.in_(OPEN))
            q = q.where(n.c.status == NotificationStatus.ROUTED.value)
            q = q.where(still_open if flt.status == IN_PROGRESS else ~still_open)
        elif flt.status is not None:
            q = q.where(n.c.status == flt.status)
        if flt.since is not None:
            q = q.where(n.c.created_at >= flt.since)
        if flt.until is not None:
            q = q.where(n.c.created_at < flt.until)
        if flt.cursor:
            q = q.where(n.c.id < flt.cursor)
        q = q.order_by(n.c.id.desc()).limit(flt.limit)

        def op(c: Connection) -> list[Notification]:
            return [self.notification_from_row(r) for r in c.execute(q)]

        return await self.db.run(op)

    async def notifications_in_progress(self, notification_ids: Sequence[str]) -> set[str]:
        d = t.deliveries
        ids = list(dict.fromkeys(notification_ids))

        def op(c: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                q = select(d.c.notification_id).where(d.c.notification_id.in_(chunk), d.c.status.in_(OPEN))
                out.update(c.execute(q.distinct()).scalars())
            return out

        return await self.db.run(op)
