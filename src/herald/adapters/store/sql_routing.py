"""Routing in the SQL store (mixed into SqlStore): accepting notifications, the router's claim,
writing what it decided (deliveries, dedup claims, the notification's progress), the context
it reads about recipients, failing and cancelling.

The hot statements run through the database's fast path (``self._fast``: :mod:`sqlite_hot` or
:mod:`pg_batch`, the same functions as the reference :mod:`hot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from herald.adapters.store import hot, pg_batch, sqlite_hot
from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import (
    CLAIMABLE,
    _delivery_rows,
    _device,
    _notification,
    _notification_body,
    _preferences_into,
    _user,
    status_values,
)
from herald.adapters.store.sql_events import event_rows
from herald.adapters.store.sql_idempotency import claim_keys
from herald.adapters.store.sql_outbox import add_outbox
from herald.adapters.store.sql_rollups import Tally, bump, templates_of
from herald.domain.errors import NotFound
from herald.domain.funnel import routed_metrics
from herald.domain.models import (
    DeliveryStatus,
    EventRecord,
    Notification,
    NotificationStatus,
    Priority,
    Reason,
)
from herald.domain.states import CANCELLABLE
from herald.ports import IdempotencyClaim, RecipientContext, RoutedBatch, RoutedClaim

S = DeliveryStatus
_ENDED_AT_ROUTING = frozenset({S.SKIPPED.value, S.FAILED.value})

# The router's claim, every pass: built once.
_N = t.notifications
# One lane (priority) at a time, oldest first: equality on (status, priority) and the order of
# ix_notifications_route, so the plan is an ordered index scan that stops at the limit whatever
# the statistics say. With ``ORDER BY priority, created_at`` PostgreSQL, believing accepted
# notifications rare (as they are when calm), read and sorted every one of a backlog for each
# claim: 25 ms a claim in the scale-out drain.
UNROUTED_NEW = (
    select(_N.c.id)
    .where(_N.c.status == NotificationStatus.ACCEPTED.value, _N.c.priority == bindparam("b_rank"))
    .order_by(_N.c.created_at)
    .limit(bindparam("b_limit"))
)
RANKS = sorted(p.rank for p in Priority)
_EXPIRED_ROUTING_EVERY = 1.0  # seconds between two looks for routing leases that ran out
UNROUTED_EXPIRED = (
    select(_N.c.id)
    .where(_N.c.status == NotificationStatus.ROUTING.value, _N.c.lease_until < bindparam("b_now"))
    .order_by(_N.c.priority, _N.c.created_at)
    .limit(bindparam("b_limit"))
)
UNROUTED_NEW_PG = UNROUTED_NEW.with_for_update(skip_locked=True)
UNROUTED_EXPIRED_PG = UNROUTED_EXPIRED.with_for_update(skip_locked=True)
_TAKE_UNROUTED = pg_batch.per_dialect(
    lambda pg: (
        update(_N)
        .where(pg_batch.ids_in(_N.c.id, pg))
        .values(
            status=NotificationStatus.ROUTING.value,
            lease_owner=bindparam("b_owner"),
            lease_until=bindparam("b_until"),
        )
        .returning(*_N.c)
    )
)


class SqlRoutingMixin:
    db: Database
    outbox: bool
    _ins: Any
    _fast: Any  # sqlite_hot or pg_batch: the database's side of the hot operations (hot.py)
    _expired_routing_checked: float  # when claim_unrouted last looked for expired leases

    # Notifications ----------------------------------------------------------------------------
    async def create_notifications(
        self,
        notifications: Sequence[Notification],
        *,
        idempotency: Sequence[IdempotencyClaim] = (),
        events: Sequence[EventRecord] = (),
    ) -> None:
        rows = [
            {
                "id": n.id,
                "status": n.status.value,
                "user_id": n.recipients[0].user_id if n.recipients else None,
                "type": n.event_type or n.template,
                "channel": n.channels[0] if n.channels and len(n.channels) == 1 else None,
                "content": _notification_body(n),
                "template": n.template,
                "template_version": n.template_version,
                "category": n.category,
                "priority": n.priority.rank,
                "send_at": n.send_at,
                "expires_at": n.expires_at,
                "dedup_key": n.dedup_key,
                "api_key_id": n.api_key_id,
                "topic": n.topic,
                "recipients_total": n.recipients_total,
                "recipients_routed": 0,
                "created_at": n.created_at,
                "lease_owner": n.routing_owner,
                "lease_until": n.routing_until,
            }
            for n in notifications
        ]

        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> None:
            if idempotency:  # first: a key taken by another request commits nothing of this
                claim_keys(c, idempotency, self._ins)
            if pg:
                if rows:
                    c.execute(insert(t.notifications), rows)
                if events:
                    c.execute(insert(t.events), event_rows(events))
            else:  # every accept's transaction: on the driver (sqlite_hot)
                sqlite_hot.insert_rows(c, t.notifications, rows)
                sqlite_hot.insert_rows(c, t.events, event_rows(events))

        await self.db.run(op)

    async def get_notification(self, notification_id: str) -> Notification | None:
        def op(c: Connection) -> Notification | None:
            row = c.execute(select(t.notifications).where(t.notifications.c.id == notification_id)).first()
            return _notification(row) if row else None

        return await self.db.run(op)

    async def claim_unrouted(
        self, *, owner: str, limit: int, lease: float, now: float, min_rank: int = 0
    ) -> list[Notification]:
        pg = self.db.dialect == "postgresql"
        new, expired = (UNROUTED_NEW_PG, UNROUTED_EXPIRED_PG) if pg else (UNROUTED_NEW, UNROUTED_EXPIRED)

        def op(c: Connection) -> list[Notification]:
            ids: list[str] = []
            for rank in RANKS:  # new ones by lane, then those whose router's lease ran out
                if rank < min_rank:
                    continue
                ids.extend(c.execute(new, {"b_rank": rank, "b_limit": limit - len(ids)}).scalars())
                if len(ids) >= limit:
                    break
            if len(ids) < limit and not 0 <= now - self._expired_routing_checked < _EXPIRED_ROUTING_EVERY:
                # Taken over from a router that died: rare, and the query reads every
                # notification being routed, so at most once a second.
                self._expired_routing_checked = now
                ids.extend(c.execute(expired, {"b_now": now, "b_limit": limit - len(ids)}).scalars())
            if not ids:
                return []
            rows = c.execute(
                _TAKE_UNROUTED[pg], {"b_ids": ids, "b_owner": owner, "b_until": now + lease}
            ).all()
            out = [_notification(r) for r in rows]
            out.sort(key=lambda x: (x.priority.rank, x.created_at))
            return out

        return await self.db.run(op)

    async def save_routed(self, batch: RoutedBatch, *, owner: str, now: float, lease: float = 60.0) -> bool:
        (ok,) = await self.save_routed_many([batch], owner=owner, now=now, lease=lease)
        return ok

    async def save_routed_many(
        self,
        batches: Sequence[RoutedBatch],
        *,
        owner: str,
        now: float,
        lease: float = 60.0,
        claim: RoutedClaim | None = None,
    ) -> list[bool]:
        n = t.notifications
        fast = self._fast

        def op(c: Connection) -> tuple[list[bool], set[str]]:
            ids = [b.notification_id for b in batches]
            # FOR UPDATE (PostgreSQL; SQLite's single writer needs none) keeps the leases ours
            # until commit: claim_unrouted (SKIP LOCKED) cannot take a row over meanwhile.
            held = fast.routing_held(c, ids, owner)
            rows: list[dict[str, Any]] = []
            taken: set[str] = set()  # written claimed (decided here: after dedup, per attempt)
            for batch in batches:
                if batch.notification_id in held:
                    if batch.dedup_key:
                        self._dedup(c, batch, now)
                    written = _delivery_rows(batch.deliveries, now)
                    if claim is not None:
                        for row, x in zip(written, batch.deliveries, strict=True):
                            if x.id in claim.ids and x.status == S.QUEUED:
                                row.update(
                                    status=S.SENDING.value,
                                    lease_owner=claim.owner,
                                    lease_until=claim.until,
                                    sending_at=now,
                                )
                                taken.add(x.id)
                    rows.extend(written)
            ended = [r for r in rows if r["status"] in _ENDED_AT_ROUTING]  # counted in the funnel
            if rows and (self.outbox or taken or ended):
                # Outbox rows only for deliveries this call inserted (a routing pass taken over
                # after a lost lease writes some again; those have theirs), and none for those
                # written claimed; a claim holds only for rows this call inserted. Likewise the
                # funnel counts only rows inserted here.
                new = fast.insert_deliveries(c, rows, returning=True)
                if self.outbox:
                    claimable = [r for r in new if r.status in CLAIMABLE]
                    add_outbox(c, [(r.id, r.channel, r.priority, r.due_at) for r in claimable], now)
                taken &= {r.id for r in new}
                if ended:
                    inserted = {r.id for r in new}
                    self._count_routed(c, [r for r in ended if r["id"] in inserted], now)
            elif rows:
                fast.insert_deliveries(c, rows, returning=False)
            finished = [b.notification_id for b in batches if b.finished and b.notification_id in held]
            for b in batches:
                if b.finished and b.notification_id in held and b.recipients_total is not None:
                    # A topic's count is known once its fan-out has walked every subscriber.
                    c.execute(
                        update(n)
                        .where(n.c.id == b.notification_id)
                        .values(
                            recipients_total=b.recipients_total,
                            route_cursor=b.cursor or n.c.route_cursor,
                        )
                    )
            if finished:
                fast.routing_finished(c, finished, now)
            for b in batches:
                if b.notification_id in held and not b.finished:
                    # Each chunk renews the routing lease, so a long fan-out keeps it while alive.
                    values: dict[str, Any] = {
                        "recipients_routed": b.recipients_done,
                        "lease_until": now + lease,
                    }
                    if b.recipients_total is not None:
                        values["recipients_total"] = b.recipients_total
                    if b.cursor is not None:
                        values["route_cursor"] = b.cursor
                    c.execute(update(n).where(n.c.id == b.notification_id).values(**values))
            return [b.notification_id in held for b in batches], taken

        oks, taken = await self.db.run(op)
        if taken:
            for b in batches:
                for x in b.deliveries:
                    if x.id in taken:
                        x.status = S.SENDING
        return oks

    @staticmethod
    def _count_routed(c: Connection, rows: list[dict[str, Any]], now: float) -> None:
        """The funnel's counts of deliveries that routing ended (skipped, failed renders)."""
        if not rows:
            return
        templates = templates_of(c, [r["notification_id"] for r in rows])
        tally = Tally()
        for r in rows:
            metrics = routed_metrics(S(r["status"]), r["reason"])
            tally.add(now, templates.get(r["notification_id"]), r["category"], r["channel"], None, metrics)
        bump(c, tally)

    async def recipient_context(self, user_ids: Sequence[str], *, with_devices: bool) -> RecipientContext:
        ids = list(dict.fromkeys(user_ids))
        read = self._fast.recipient_rows

        def op(c: Connection) -> RecipientContext:
            ctx = RecipientContext(users={}, preferences={}, devices={}, suppressed={})
            for i in range(0, len(ids), hot.CHUNK):
                users, preferences, settings, devices, suppressed = read(
                    c, ids[i : i + hot.CHUNK], with_devices=with_devices
                )
                for row in users:
                    ctx.users[row.id] = _user(row)
                _preferences_into(ctx.preferences, preferences, settings)
                for row in devices:
                    ctx.devices.setdefault(row.user_id, []).append(_device(row))
                for channel, addresses in suppressed.items():
                    ctx.suppressed.setdefault(channel, set()).update(addresses)
            return ctx

        return await self.db.run(op)

    def _dedup(self, c: Connection, batch: RoutedBatch, now: float) -> None:
        """Claim (dedup_key, user) for this notification; users held by another live claim are
        skipped as duplicates. Insert-or-ignore then read makes it safe under concurrency."""
        k = t.dedup_keys
        key = batch.dedup_key or ""
        users = sorted({x.user_id for x in batch.deliveries if x.status in (S.QUEUED, S.SCHEDULED)})
        if not users:
            return
        c.execute(
            self._ins(k).on_conflict_do_nothing(),
            [
                {
                    "key": key,
                    "user_id": u,
                    "notification_id": batch.notification_id,
                    "expires_at": now + batch.dedup_window,
                }
                for u in users
            ],
        )
        c.execute(
            update(k)
            .where(k.c.key == key, k.c.user_id.in_(users), k.c.expires_at <= now)
            .values(notification_id=batch.notification_id, expires_at=now + batch.dedup_window)
        )
        held = {
            r.user_id
            for r in c.execute(
                select(k.c.user_id, k.c.notification_id).where(k.c.key == key, k.c.user_id.in_(users))
            )
            if r.notification_id != batch.notification_id
        }
        for x in batch.deliveries:
            if x.user_id in held and x.status in (S.QUEUED, S.SCHEDULED):
                x.status = S.SKIPPED
                x.reason = Reason.DUPLICATE.value

    async def fail_routing(self, notification_id: str, error: str, *, now: float) -> None:
        n = t.notifications
        await self.db.run(
            lambda c: c.execute(
                update(n)
                .where(n.c.id == notification_id)
                .values(
                    status=NotificationStatus.FAILED.value, error=error, lease_owner=None, lease_until=None
                )
            )
        )

    async def cancel_notification(self, notification_id: str, *, now: float) -> tuple[int, int]:
        n, d = t.notifications, t.deliveries

        def op(c: Connection) -> tuple[int, int]:
            row = c.execute(select(n.c.status).where(n.c.id == notification_id)).first()
            if row is None:
                raise NotFound(f"notification {notification_id} does not exist")
            if row.status in (NotificationStatus.ACCEPTED.value, NotificationStatus.ROUTING.value):
                # Not routed yet: stop routing; deliveries already written are cancelled below.
                c.execute(
                    update(n)
                    .where(n.c.id == notification_id)
                    .values(status=NotificationStatus.CANCELLED.value, lease_owner=None, lease_until=None)
                )
            cancelled = c.execute(
                update(d)
                .where(d.c.notification_id == notification_id, d.c.status.in_(status_values(CANCELLABLE)))
                .values(status=S.CANCELLED.value, reason=Reason.CANCELLED.value, updated_at=now, due_at=now)
            ).rowcount
            final = c.execute(
                select(func.count())
                .select_from(d)
                .where(d.c.notification_id == notification_id, d.c.status.not_in([S.CANCELLED.value]))
            ).scalar_one()
            return cancelled, int(final)

        return await self.db.run(op)

    async def first_seen(self, key: str, *, ttl: float, now: float) -> bool:
        k = t.dedup_keys

        def op(c: Connection) -> bool:
            c.execute(delete(k).where(k.c.key == key, k.c.user_id == "-", k.c.expires_at <= now))
            # RETURNING, not rowcount: an INSERT's rowcount is -1 on psycopg (reads as "new").
            inserted = c.execute(
                self._ins(k)
                .values(key=key, user_id="-", notification_id="-", expires_at=now + ttl)
                .on_conflict_do_nothing()
                .returning(k.c.key)
            ).first()
            return inserted is not None

        return await self.db.run(op)
