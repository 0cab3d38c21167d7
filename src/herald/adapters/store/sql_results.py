"""Results in the SQL store (mixed into SqlStore): what senders record, tracking events, the
deliveries as the API reads them, and the in-app inbox.

``record_results`` runs through the database's fast path (``self._fast``: :mod:`sqlite_hot` or
:mod:`pg_batch`, the same functions as the reference :mod:`hot`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog
from sqlalchemy import Connection, and_, func, select, update

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import CLAIMABLE, _attempt, _delivery, attempt_rows
from herald.adapters.store.sql_directory import suppress
from herald.adapters.store.sql_events import reopen_for_fallback
from herald.adapters.store.sql_inbox import IN_APP, number_items
from herald.adapters.store.sql_outbox import add_outbox
from herald.adapters.store.sql_rollups import Tally, bump, count_changed, templates_of
from herald.domain.errors import IllegalTransition, NotFound
from herald.domain.funnel import marked_metrics, result_metrics
from herald.domain.models import Delivery, DeliveryResult, DeliveryStatus, Reason
from herald.domain.states import check_transition

S = DeliveryStatus
log = structlog.get_logger("herald.store")

# Told after each commit that numbered in-app items in their users' feeds, with the numbers:
# [(user_id, delivery_id, number)], in order per user.
InboxListener = Callable[[list[tuple[str, str, int]]], None]


class SqlResultsMixin:
    db: Database
    outbox: bool
    _ins: Any
    _fast: Any  # sqlite_hot or pg_batch: the database's side of the hot operations (hot.py)
    _inbox_listeners: list[InboxListener]

    def on_inbox_numbered(self, listener: InboxListener) -> None:
        """Call ``listener`` after every commit that numbered in-app items (sent) in their
        users' inbox feeds: the live streams of this process hear of them then."""
        self._inbox_listeners.append(listener)

    # Deliveries -------------------------------------------------------------------------------
    async def get_deliveries(
        self,
        notification_id: str,
        *,
        with_attempts: bool = True,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Delivery]:
        d, a = t.deliveries, t.attempts
        q = select(d).where(d.c.notification_id == notification_id).order_by(d.c.id)
        if after is not None:
            q = q.where(d.c.id > after)
        if limit is not None:
            q = q.limit(limit)

        def op(c: Connection) -> list[Delivery]:
            out = [_delivery(r) for r in c.execute(q)]
            if with_attempts and out:
                by_id = {x.id: x for x in out}
                ids = list(by_id)
                for i in range(0, len(ids), 500):
                    rows = c.execute(
                        select(a)
                        .where(a.c.delivery_id.in_(ids[i : i + 500]))
                        .order_by(a.c.delivery_id, a.c.n, a.c.id)
                    )
                    for r in rows:
                        by_id[r.delivery_id].attempts.append(_attempt(r))
            return out

        return await self.db.run(op)

    async def status_counts(self, notification_id: str) -> dict[str, int]:
        d = t.deliveries
        q = (
            select(d.c.status, func.count())
            .where(d.c.notification_id == notification_id)
            .group_by(d.c.status)
        )
        return await self.db.run(lambda c: {str(r[0]): int(r[1]) for r in c.execute(q)})

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        d, a = t.deliveries, t.attempts

        def op(c: Connection) -> Delivery | None:
            row = c.execute(select(d).where(d.c.id == delivery_id)).first()
            if row is None:
                return None
            out = _delivery(row)
            out.attempts = [
                _attempt(r)
                for r in c.execute(select(a).where(a.c.delivery_id == delivery_id).order_by(a.c.n, a.c.id))
            ]
            return out

        return await self.db.run(op)

    async def record_results(self, results: Sequence[DeliveryResult], *, now: float) -> list[str]:
        fast = self._fast

        def op(c: Connection) -> tuple[list[str], list[tuple[str, str, int]]]:
            # A result given twice counts once: the first.
            batch: dict[str, DeliveryResult] = {}
            for r in results:
                check_transition(S.SENDING, r.new_status)
                batch.setdefault(r.delivery_id, r)
            # {delivery id: (channel, priority, due_at after the change)} of the rows changed:
            # those still in ``sending`` under the result's lease.
            changed = fast.apply_results(c, batch, now)
            # In-app items sent take their number in the user's feed in this transaction, right
            # after the rows they lock (no other lock is taken before these: no lock cycle).
            inbox = [
                (row.user_id, r.delivery_id)
                for r in batch.values()
                if r.new_status == S.SENT
                and (row := changed.get(r.delivery_id)) is not None
                and row.channel == IN_APP
            ]
            numbers = number_items(c, inbox, now) if inbox else {}
            recorded: list[DeliveryResult] = []
            requeued: list[tuple[str, str, int, float]] = []  # outbox rows (broker queue only)
            tally = Tally()  # the funnel's counts (sql_rollups.py), written last
            for r in batch.values():
                row = changed.get(r.delivery_id)
                if row is None:
                    continue
                channel = row.channel
                if self.outbox and r.new_status.value in CLAIMABLE:
                    requeued.append((r.delivery_id, channel, row.priority, row.due_at))
                at = r.attempt
                counted = result_metrics(r.new_status, r.reason, at.outcome)
                if counted:
                    tally.add(row.created_at, row.template, row.category, channel, at.provider, counted)
                recorded.append(r)
                if r.fallback and r.new_status in (S.FAILED, S.DEAD):
                    # Same transaction: the notification goes back to the router, which hands
                    # this recipient to the next channel of the chain (see RouterService).
                    reopen_for_fallback(c, r.notification_id)
                if r.dead_address:
                    reason = r.reason or Reason.INVALID_ADDRESS.value
                    suppress(c, self._ins, channel, r.dead_address, reason, now)
            fast.insert_attempts(c, attempt_rows(recorded))
            if requeued:
                add_outbox(c, requeued, now)
            bump(c, tally)
            # Rejected: lost its lease (or not sending any more), or given twice.
            rejected = [
                r.delivery_id
                for r in results
                if batch.get(r.delivery_id) is not r or r.delivery_id not in changed
            ]
            return rejected, [(user, delivery_id, numbers[delivery_id]) for user, delivery_id in inbox]

        rejected, numbered = await self.db.run(op)
        if numbered:  # committed: now the streams may read them
            for listener in self._inbox_listeners:
                try:
                    listener(numbered)
                except Exception:  # a live wake-up is best effort; the results are recorded
                    log.exception("store.inbox_listener_failed")
        return rejected

    async def mark_delivery(
        self,
        delivery_id: str,
        status: DeliveryStatus,
        *,
        now: float,
        user_id: str | None = None,
        reason: str | None = None,
    ) -> Delivery:
        d = t.deliveries
        stamp = {S.DELIVERED: "delivered_at", S.READ: "read_at", S.FAILED: "failed_at"}.get(status)

        def op(c: Connection) -> Delivery:
            q = select(d).where(d.c.id == delivery_id)
            if user_id is not None:
                q = q.where(d.c.user_id == user_id)
            row = c.execute(q).first()
            if row is None:
                raise NotFound(f"delivery {delivery_id} does not exist")
            current = S(row.status)
            if current == status or (current == S.READ and status == S.DELIVERED):
                return _delivery(row)  # repeated or late tracking events change nothing
            check_transition(current, status)
            values: dict[str, Any] = {"status": status.value, "updated_at": now}
            if stamp:
                values[stamp] = now
            if reason is not None:
                values["reason"] = reason
            if status == S.READ and row.delivered_at is None:
                values["delivered_at"] = now
            changed = c.execute(
                update(d).where(d.c.id == delivery_id, d.c.status == current.value).values(**values)
            )
            if not changed.rowcount:
                raise IllegalTransition("the delivery changed concurrently; try again")
            counted = marked_metrics(row.channel, current, status, reason)
            if counted:
                tally = Tally()
                template = templates_of(c, [row.notification_id]).get(row.notification_id)
                tally.add(row.created_at, template, row.category, row.channel, row.provider, counted)
                bump(c, tally)
            marked = _delivery(c.execute(select(d).where(d.c.id == delivery_id)).one())
            if status == S.FAILED and (marked.content.get("_meta") or {}).get("fallback"):
                reopen_for_fallback(c, marked.notification_id)  # a bounce moves the chain on too
            return marked

        return await self.db.run(op)

    async def find_delivery(self, provider_message_id: str) -> Delivery | None:
        d = t.deliveries

        def op(c: Connection) -> Delivery | None:
            row = c.execute(select(d).where(d.c.provider_message_id == provider_message_id).limit(1)).first()
            return _delivery(row) if row else None

        return await self.db.run(op)

    # Inbox -------------------------------------------------------------------------------------
    async def list_inbox(
        self, user_id: str, *, unread_only: bool, cursor: str | None, limit: int
    ) -> tuple[list[Delivery], int]:
        d = t.deliveries
        visible = [S.SENT.value, S.DELIVERED.value, S.READ.value]
        unread = [S.SENT.value, S.DELIVERED.value]

        def op(c: Connection) -> tuple[list[Delivery], int]:
            base = and_(d.c.user_id == user_id, d.c.channel == IN_APP)
            q = select(d).where(base, d.c.status.in_(unread if unread_only else visible))
            if cursor:
                q = q.where(d.c.id < cursor)
            items = [_delivery(r) for r in c.execute(q.order_by(d.c.id.desc()).limit(limit))]
            count = c.execute(
                select(func.count()).select_from(d).where(base, d.c.status.in_(unread))
            ).scalar_one()
            return items, int(count)

        return await self.db.run(op)

    async def mark_all_read(self, user_id: str, *, now: float) -> int:
        d = t.deliveries

        def op(c: Connection) -> int:
            ids = list(
                c.execute(
                    update(d)
                    .where(
                        d.c.user_id == user_id,
                        d.c.channel == IN_APP,
                        d.c.status.in_([S.SENT.value, S.DELIVERED.value]),
                    )
                    .values(status=S.READ.value, read_at=now, updated_at=now)
                    .returning(d.c.id)
                ).scalars()
            )
            count_changed(c, ids, ("opened",))  # an in-app message read is opened (the funnel)
            return len(ids)

        return await self.db.run(op)
