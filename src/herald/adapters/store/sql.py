"""The Store port on SQL (SQLite or PostgreSQL), through SQLAlchemy Core."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite

from herald.adapters.store import pg_batch, sqlite_hot
from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import (
    _attempt,
    _delivery,
    _delivery_rows,
    _device,
    _dumps,
    _loads,
    _notification,
    _notification_body,
    _template,
    _user,
)
from herald.adapters.store.sql_admin import SqlAdminMixin
from herald.adapters.store.sql_dead_letters import SqlDeadLettersMixin
from herald.adapters.store.sql_digests import HELD_REASON, SCHEDULED, SqlDigestsMixin
from herald.adapters.store.sql_engagement import SqlEngagementMixin
from herald.adapters.store.sql_events import SqlEventsMixin, event_rows, reopen_for_fallback
from herald.adapters.store.sql_idempotency import SqlIdempotencyMixin, claim_keys
from herald.adapters.store.sql_insight import SqlInsightMixin
from herald.adapters.store.sql_listing import SqlListingMixin
from herald.adapters.store.sql_outbox import SqlOutboxMixin, add_outbox
from herald.adapters.store.sql_rollups import Tally, bump, count_changed, templates_of
from herald.adapters.store.sql_stats import SqlStatsMixin
from herald.adapters.store.sqlite_hot import Changed
from herald.domain.audience import SKIPPED_EVENT, skipped_fields
from herald.domain.errors import IllegalTransition, NotFound
from herald.domain.funnel import marked_metrics, result_metrics, routed_metrics
from herald.domain.models import (
    ApiKey,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    Device,
    EventRecord,
    Notification,
    NotificationStatus,
    Outcome,
    Preferences,
    Priority,
    Reason,
    Template,
    User,
)
from herald.domain.states import CANCELLABLE, check_transition, sources_of
from herald.ports import (
    IdempotencyClaim,
    Promoted,
    RecipientContext,
    RoutedBatch,
    RoutedClaim,
)

log = structlog.get_logger("herald.store")

S = DeliveryStatus
_CLAIMABLE = frozenset({S.QUEUED.value, S.RETRYING.value})
_ENDED_AT_ROUTING = frozenset({S.SKIPPED.value, S.FAILED.value})


def _in(statuses: Sequence[S] | frozenset[S]) -> list[str]:
    return sorted(s.value for s in statuses)


# ``+status``: without it SQLite walks ix_deliveries_lease over every queued delivery each
# scheduler tick (55 ms with 77,000 queued) instead of reading ix_deliveries_expiry.
SQLITE_EXPIRY_SWEEP = text(
    "UPDATE deliveries SET status = :skipped, reason = 'expired', updated_at = :now "  # noqa: S608
    f"WHERE +status IN ({', '.join(repr(w) for w in _in(sources_of(S.SKIPPED) - {S.SENDING, S.PENDING}))}) "
    "AND expires_at IS NOT NULL AND expires_at <= :now RETURNING id"
)


_D = t.deliveries


# Routing reads these for every pass on PostgreSQL: built once, with the id list as one array
# parameter (building them per pass was most of the pass's time; see pg_batch). SQLite runs
# the same reads on its driver connection (sqlite_hot.recipient_rows).
_U, _SP = t.users, t.suppressions
_ids_in, _per_dialect = pg_batch.ids_in, pg_batch.per_dialect
_ids_pg = functools.partial(_ids_in, pg=True)
_CTX_USERS = select(_U).where(_ids_pg(_U.c.id))
_CTX_PREFERENCES = select(t.user_preferences).where(_ids_pg(t.user_preferences.c.user_id))
_CTX_SETTINGS = select(t.user_settings).where(_ids_pg(t.user_settings.c.user_id))
_CTX_DEVICES = (
    select(t.devices)
    .where(_ids_pg(t.devices.c.user_id), t.devices.c.active.is_(True))
    .order_by(t.devices.c.created_at)
)
_CTX_SUPPRESSED = {
    channel: select(_SP.c.address)
    .select_from(_SP.join(_U, _SP.c.address == column))
    .where(_SP.c.channel == channel, _ids_pg(_U.c.id))
    for channel, column in (("email", _U.c.email), ("sms", _U.c.phone), ("webhook", _U.c.webhook_url))
}


def _ctx_rows_pg(
    c: Connection, ids: Sequence[str], *, with_devices: bool
) -> tuple[list[Any], list[Any], list[Any], list[Any], dict[str, set[str]]]:
    """PostgreSQL's side of :func:`sqlite_hot.recipient_rows`."""
    chunk = {"b_ids": ids}
    suppressed = {channel: set(c.execute(stmt, chunk).scalars()) for channel, stmt in _CTX_SUPPRESSED.items()}
    return (
        list(c.execute(_CTX_USERS, chunk)),
        list(c.execute(_CTX_PREFERENCES, chunk)),
        list(c.execute(_CTX_SETTINGS, chunk)),
        list(c.execute(_CTX_DEVICES, chunk)) if with_devices else [],
        {channel: addresses for channel, addresses in suppressed.items() if addresses},
    )


# The router's claim, every pass: built once (see _CTX_USERS).
_N = t.notifications
# One lane (priority) at a time, oldest first: equality on (status, priority) and the order of
# ix_notifications_route, so the plan is an ordered index scan that stops at the limit whatever
# the statistics say. With ``ORDER BY priority, created_at`` PostgreSQL, believing accepted
# notifications rare (as they are when calm), read and sorted every one of a backlog for each
# claim: 25 ms a claim in the scale-out drain.
_UNROUTED_NEW = (
    select(_N.c.id)
    .where(_N.c.status == NotificationStatus.ACCEPTED.value, _N.c.priority == bindparam("b_rank"))
    .order_by(_N.c.created_at)
    .limit(bindparam("b_limit"))
)
_RANKS = sorted(p.rank for p in Priority)
_NO_LIMIT = 2**31 - 1
_EXPIRED_ROUTING_EVERY = 1.0  # seconds between two looks for routing leases that ran out
_UNROUTED_EXPIRED = (
    select(_N.c.id)
    .where(_N.c.status == NotificationStatus.ROUTING.value, _N.c.lease_until < bindparam("b_now"))
    .order_by(_N.c.priority, _N.c.created_at)
    .limit(bindparam("b_limit"))
)
_UNROUTED_NEW_PG = _UNROUTED_NEW.with_for_update(skip_locked=True)
_UNROUTED_EXPIRED_PG = _UNROUTED_EXPIRED.with_for_update(skip_locked=True)
_TAKE_UNROUTED = _per_dialect(
    lambda pg: (
        update(_N)
        .where(_ids_in(_N.c.id, pg))
        .values(
            status=NotificationStatus.ROUTING.value,
            lease_owner=bindparam("b_owner"),
            lease_until=bindparam("b_until"),
        )
        .returning(*_N.c)
    )
)
# save_routed_many on PostgreSQL (SQLite: sqlite_hot.routing_held / routing_finished): the
# routing leases still ours (locked until commit), and the notifications whose routing finished.
_ROUTING_HELD = (
    select(_N.c.id)
    .where(
        _ids_pg(_N.c.id),
        # ``|| ''``: by primary key, never the status index (see sql_outbox._CLAIM_IDS): 2.7
        # ms a routing pass on PostgreSQL in the scale-out flood, reading routed notifications.
        (_N.c.status + literal("")) == NotificationStatus.ROUTING.value,
        _N.c.lease_owner == bindparam("b_owner"),
    )
    .order_by(_N.c.id)
    .with_for_update()
)
_ROUTING_FINISHED = (
    update(_N)
    .where(_ids_pg(_N.c.id))
    .values(
        status=NotificationStatus.ROUTED.value,
        routed_at=bindparam("b_now"),
        lease_owner=None,
        lease_until=None,
        recipients_routed=_N.c.recipients_total,
    )
)

PROMOTE_SCHEDULED = (
    update(_D)
    .where(
        SCHEDULED,
        _D.c.due_at <= bindparam("b_now"),
        # Held for a digest (sql_digests.py): only the digest step may move these.
        func.coalesce(_D.c.reason, "") != HELD_REASON,
    )
    .values(status=S.QUEUED.value, queued_at=bindparam("b_now"), updated_at=bindparam("b_now"))
    .returning(_D.c.id, _D.c.channel, _D.c.priority, _D.c.due_at)
)


def _pick_due_lane(pg: bool) -> Any:
    """A chunk of one lane's due scheduled deliveries, earliest first (ix_deliveries_due_lane).
    Picked first and updated by id: PostgreSQL may run an ``IN (SELECT … LIMIT … SKIP LOCKED)``
    subquery again while updating and so move more than the limit (seen in the contract test)."""
    pick = (
        select(_D.c.id)
        .where(
            SCHEDULED,
            _D.c.priority == bindparam("b_rank"),
            _D.c.due_at <= bindparam("b_now"),
            func.coalesce(_D.c.reason, "") != HELD_REASON,
        )
        .order_by(_D.c.due_at)
        .limit(bindparam("b_limit"))
    )
    return pick.with_for_update(skip_locked=True) if pg else pick


PICK_DUE_LANE = pg_batch.per_dialect(_pick_due_lane)
PROMOTE_IDS = pg_batch.per_dialect(
    lambda pg: (
        update(_D)
        .where(pg_batch.ids_in(_D.c.id, pg), SCHEDULED)
        .values(status=S.QUEUED.value, queued_at=bindparam("b_now"), updated_at=bindparam("b_now"))
        .returning(_D.c.id, _D.c.channel, _D.c.priority, _D.c.due_at)
    )
)


# PostgreSQL: deliveries are inserted as one array per column through ``unnest`` (see
# :mod:`pg_batch`). SQLAlchemy's multi-row ``VALUES (...), (...)`` for a routing page was
# re-parsed by psycopg every time (20% of herald's time when draining on PostgreSQL).
_PG_DELIVERY_COLUMNS = sqlite_hot.DELIVERY_COLUMNS
_PG_INSERT_DELIVERIES_PLAIN = pg_batch.UnnestInsert(
    t.deliveries, _PG_DELIVERY_COLUMNS, "ON CONFLICT DO NOTHING"
)
_PG_INSERT_DELIVERIES_RETURNING = pg_batch.UnnestInsert(
    t.deliveries,
    _PG_DELIVERY_COLUMNS,
    "ON CONFLICT DO NOTHING RETURNING id, channel, priority, due_at, status",
)


def _insert_deliveries(c: Connection, rows: list[dict[str, Any]], *, returning: bool) -> list[Any]:
    """Insert delivery rows, skipping any that exist; with ``returning``, the inserted rows'
    id, channel, priority, due_at and status."""
    if c.dialect.name == "postgresql":
        stmt = _PG_INSERT_DELIVERIES_RETURNING if returning else _PG_INSERT_DELIVERIES_PLAIN
        result = stmt.execute(c, rows)
        return list(result.all()) if returning else []
    return sqlite_hot.insert_deliveries(c, rows, returning=returning)


# Queue tables vacuumed by ``maintain`` once this many rows are dead (and a fifth of the live).
_MAINTAINED = {"outbox": 5_000, "deliveries": 50_000, "notifications": 50_000}
_DEAD_FRACTION = 0.2
_DEAD_ROWS = text(
    "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables "
    "WHERE schemaname = current_schema() AND relname = ANY(CAST(:tables AS text[]))"
)


def _result_params(r: DeliveryResult, now: float) -> dict[str, Any]:
    sent = r.new_status == S.SENT
    return {
        "b_id": r.delivery_id,
        "b_owner": r.lease_owner,
        "b_status": r.new_status.value,
        "b_reason": r.reason,
        "b_provider": r.attempt.provider,
        "b_n": r.attempt.n,
        "b_budget": 1 if r.counts_against_budget else 0,
        "b_now": now,
        "b_sent_at": r.attempt.at if sent else None,
        "b_message_id": r.provider_message_id if sent else None,
        "b_failed_at": now if r.new_status in (S.FAILED, S.DEAD) else None,
        "b_due_at": r.due_at,
    }


def _apply_results_pg(c: Connection, batch: dict[str, DeliveryResult], now: float) -> dict[str, Changed]:
    """PostgreSQL: one ``UPDATE … FROM unnest(…)`` for the batch (see :mod:`pg_batch`)."""
    ordered = sorted(batch.values(), key=lambda x: x.delivery_id)  # lock rows in one order
    named = [{k[2:]: v for k, v in _result_params(r, now).items()} for r in ordered]
    rows = c.execute(pg_batch.RECORD_RESULTS, pg_batch.result_params(named, now))
    return {
        row.id: Changed(row.channel, row.priority, row.due_at, row.created_at, row.category, row.template)
        for row in rows
    }


class SqlStore(
    SqlEventsMixin,
    SqlDigestsMixin,
    SqlOutboxMixin,
    SqlDeadLettersMixin,
    SqlInsightMixin,
    SqlEngagementMixin,
    SqlStatsMixin,
    SqlAdminMixin,
    SqlListingMixin,
    SqlIdempotencyMixin,
):
    """Store on SQLite or PostgreSQL. ``db`` is shared with the ``sql`` queue.

    ``outbox``: write an outbox row with every change that makes a delivery claimable, for a
    broker queue (see :mod:`herald.adapters.store.sql_outbox`). Off for the ``sql`` queue.
    """

    notification_from_row = staticmethod(_notification)

    def __init__(self, db: Database, *, outbox: bool = False) -> None:
        self.db = db
        self.outbox = outbox
        self._expired_routing_checked = -math.inf  # when claim_unrouted last looked for those
        if db.dialect == "postgresql":
            # Imported here: a command on SQLite (herald keys create) need not load it.
            from sqlalchemy.dialects import postgresql  # noqa: PLC0415

            self._ins = postgresql.insert
        else:
            self._ins = sqlite.insert

    async def start(self) -> None:
        await self.db.upgrade_async()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.run(lambda c: c.execute(select(1)).scalar())

    # API keys and settings ------------------------------------------------------------------
    async def create_api_key(self, key: ApiKey, key_hash: str) -> None:
        def op(c: Connection) -> None:
            c.execute(
                insert(t.api_keys).values(
                    id=key.id,
                    name=key.name,
                    key_hash=key_hash,
                    scopes=",".join(sorted(key.scopes)),
                    created_at=key.created_at,
                )
            )

        await self.db.run(op)

    async def get_api_key(self, key_hash: str) -> ApiKey | None:
        def op(c: Connection) -> ApiKey | None:
            row = c.execute(
                select(t.api_keys).where(t.api_keys.c.key_hash == key_hash, t.api_keys.c.revoked_at.is_(None))
            ).first()
            if row is None:
                return None
            return ApiKey(
                id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")), created_at=row.created_at
            )

        return await self.db.run(op)

    async def get_setting(self, name: str) -> str | None:
        return await self.db.run(
            lambda c: c.execute(select(t.settings.c.value).where(t.settings.c.name == name)).scalar()
        )

    async def put_setting_if_absent(self, name: str, value: str) -> str:
        def op(c: Connection) -> str:
            c.execute(self._ins(t.settings).values(name=name, value=value).on_conflict_do_nothing())
            stored = c.execute(select(t.settings.c.value).where(t.settings.c.name == name)).scalar_one()
            return str(stored)

        return await self.db.run(op)

    # Users -----------------------------------------------------------------------------------
    async def put_user(self, user: User) -> User:
        def op(c: Connection) -> User:
            values = {
                "email": user.email,
                "phone": user.phone,
                "locale": user.locale,
                "timezone": user.timezone,
                "data": _dumps(user.data),
                "webhook_url": user.webhook_url,
                "chat": _dumps(user.chat),
                "updated_at": user.updated_at,
            }
            # One upsert: two concurrent PUTs of a new user must not both try to INSERT
            # (PostgreSQL runs them in parallel; SQLite's single writer hid the race).
            stmt = self._ins(t.users).values(id=user.id, created_at=user.updated_at, **values)
            stmt = stmt.on_conflict_do_update(index_elements=[t.users.c.id], set_=values)
            user.created_at = c.execute(stmt.returning(t.users.c.created_at)).scalar_one()
            return user

        return await self.db.run(op)

    async def get_user(self, user_id: str) -> User | None:
        def op(c: Connection) -> User | None:
            row = c.execute(select(t.users).where(t.users.c.id == user_id)).first()
            return _user(row) if row else None

        return await self.db.run(op)

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, User]:
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> dict[str, User]:
            out: dict[str, User] = {}
            for i in range(0, len(ids), 500):
                for row in c.execute(select(t.users).where(t.users.c.id.in_(ids[i : i + 500]))):
                    out[row.id] = _user(row)
            return out

        return await self.db.run(op)

    async def delete_user(self, user_id: str) -> bool:
        def op(c: Connection) -> bool:
            gone = c.execute(delete(t.users).where(t.users.c.id == user_id)).rowcount > 0
            c.execute(delete(t.devices).where(t.devices.c.user_id == user_id))
            c.execute(delete(t.user_preferences).where(t.user_preferences.c.user_id == user_id))
            c.execute(delete(t.user_settings).where(t.user_settings.c.user_id == user_id))
            c.execute(delete(t.topic_subscribers).where(t.topic_subscribers.c.user_id == user_id))
            # Keep the delivery log (counts, outcomes) but erase what identifies the person.
            c.execute(
                update(t.deliveries)
                .where(t.deliveries.c.user_id == user_id)
                .values(address=None, content="{}")
            )
            return gone

        return await self.db.run(op)

    # Devices ---------------------------------------------------------------------------------
    async def add_device(self, device: Device) -> Device:
        def op(c: Connection) -> Device:
            row = c.execute(
                select(t.devices).where(
                    t.devices.c.user_id == device.user_id,
                    t.devices.c.kind == device.kind,
                    t.devices.c.token == device.token,
                )
            ).first()
            if row is not None:
                c.execute(
                    update(t.devices)
                    .where(t.devices.c.id == row.id)
                    .values(active=True, deactivated_at=None, data=_dumps(device.data))
                )
                device.id = row.id
                device.created_at = row.created_at
                return device
            c.execute(
                insert(t.devices).values(
                    id=device.id,
                    user_id=device.user_id,
                    kind=device.kind,
                    token=device.token,
                    data=_dumps(device.data),
                    active=True,
                    created_at=device.created_at,
                )
            )
            return device

        return await self.db.run(op)

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        return await self.db.run(
            lambda c: (
                c.execute(
                    delete(t.devices).where(t.devices.c.user_id == user_id, t.devices.c.id == device_id)
                ).rowcount
                > 0
            )
        )

    async def list_devices(self, user_ids: Sequence[str], *, active_only: bool = True) -> list[Device]:
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> list[Device]:
            out: list[Device] = []
            for i in range(0, len(ids), 500):
                q = select(t.devices).where(t.devices.c.user_id.in_(ids[i : i + 500]))
                if active_only:
                    q = q.where(t.devices.c.active.is_(True))
                out.extend(_device(r) for r in c.execute(q.order_by(t.devices.c.created_at)))
            return out

        return await self.db.run(op)

    # Preferences ---------------------------------------------------------------------------
    async def get_preferences(self, user_id: str) -> Preferences | None:
        return (await self.get_preferences_many([user_id])).get(user_id)

    async def get_preferences_many(self, user_ids: Sequence[str]) -> dict[str, Preferences]:
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> dict[str, Preferences]:
            out: dict[str, Preferences] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                for row in c.execute(
                    select(t.user_preferences).where(t.user_preferences.c.user_id.in_(chunk))
                ):
                    p = out.setdefault(row.user_id, Preferences(user_id=row.user_id))
                    if row.category == "*":
                        p.channels[row.channel] = bool(row.enabled)
                    else:
                        p.categories.setdefault(row.category, {})[row.channel] = bool(row.enabled)
                for row in c.execute(select(t.user_settings).where(t.user_settings.c.user_id.in_(chunk))):
                    p = out.setdefault(row.user_id, Preferences(user_id=row.user_id))
                    p.quiet_hours = _loads(row.quiet_hours)
                    p.digests = _loads(row.digests) or {}
            return out

        return await self.db.run(op)

    async def put_preferences(self, prefs: Preferences) -> None:
        def op(c: Connection) -> None:
            # The settings row is upserted first: its row lock orders concurrent writers for
            # one user on PostgreSQL, so the delete below sees the previous writer's rows
            # instead of both inserting the same keys.
            settings = {
                "quiet_hours": _dumps(prefs.quiet_hours) if prefs.quiet_hours else None,
                "digests": _dumps(prefs.digests),
            }
            c.execute(
                self._ins(t.user_settings)
                .values(user_id=prefs.user_id, **settings)
                .on_conflict_do_update(index_elements=[t.user_settings.c.user_id], set_=settings)
            )
            c.execute(delete(t.user_preferences).where(t.user_preferences.c.user_id == prefs.user_id))
            rows = [
                {"user_id": prefs.user_id, "channel": ch, "category": "*", "enabled": on}
                for ch, on in prefs.channels.items()
            ]
            rows += [
                {"user_id": prefs.user_id, "channel": ch, "category": cat, "enabled": on}
                for cat, chans in prefs.categories.items()
                for ch, on in chans.items()
            ]
            if rows:
                c.execute(insert(t.user_preferences), rows)

        await self.db.run(op)

    # Templates -----------------------------------------------------------------------------
    async def put_template(self, template: Template) -> Template:
        def op(c: Connection) -> Template:
            while True:
                latest = c.execute(
                    select(func.max(t.templates.c.version)).where(t.templates.c.name == template.name)
                ).scalar()
                template.version = (latest or 0) + 1
                # A concurrent writer may take the same version first (PostgreSQL): the insert
                # then does nothing (after waiting for that writer's commit) and we read again.
                inserted = c.execute(
                    self._ins(t.templates)
                    .values(
                        name=template.name,
                        version=template.version,
                        category=template.category,
                        channels=_dumps(template.channels),
                        locales=_dumps(template.locales),
                        default_locale=template.default_locale,
                        deleted=False,
                        created_at=template.created_at,
                    )
                    .on_conflict_do_nothing()
                    .returning(t.templates.c.version)
                ).first()
                if inserted is not None:
                    return template

        return await self.db.run(op)

    async def get_template(self, name: str, version: int | None = None) -> Template | None:
        def op(c: Connection) -> Template | None:
            q = select(t.templates).where(t.templates.c.name == name)
            if version is None:
                q = q.order_by(t.templates.c.version.desc()).limit(1)
            else:
                q = q.where(t.templates.c.version == version)
            row = c.execute(q).first()
            if row is None or (version is None and row.deleted):
                return None
            return _template(row)

        return await self.db.run(op)

    async def delete_template(self, name: str) -> bool:
        def op(c: Connection) -> bool:
            # Versions stay for notifications still routing; the name stops resolving.
            latest = c.execute(
                select(t.templates.c.version, t.templates.c.deleted)
                .where(t.templates.c.name == name)
                .order_by(t.templates.c.version.desc())
                .limit(1)
            ).first()
            if latest is None or latest.deleted:
                return False
            c.execute(update(t.templates).where(t.templates.c.name == name).values(deleted=True))
            return True

        return await self.db.run(op)

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
        new, expired = (_UNROUTED_NEW_PG, _UNROUTED_EXPIRED_PG) if pg else (_UNROUTED_NEW, _UNROUTED_EXPIRED)

        def op(c: Connection) -> list[Notification]:
            ids: list[str] = []
            for rank in _RANKS:  # new ones by lane, then those whose router's lease ran out
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
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> tuple[list[bool], set[str]]:
            ids = [b.notification_id for b in batches]
            # FOR UPDATE (PostgreSQL; SQLite's single writer needs none) keeps the leases ours
            # until commit: claim_unrouted (SKIP LOCKED) cannot take a row over meanwhile.
            if pg:
                held = set(c.execute(_ROUTING_HELD, {"b_ids": ids, "b_owner": owner}).scalars())
            else:
                held = sqlite_hot.routing_held(c, ids, owner)
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
                new = _insert_deliveries(c, rows, returning=True)
                if self.outbox:
                    claimable = [r for r in new if r.status in _CLAIMABLE]
                    add_outbox(c, [(r.id, r.channel, r.priority, r.due_at) for r in claimable], now)
                taken &= {r.id for r in new}
                if ended:
                    inserted = {r.id for r in new}
                    self._count_routed(c, [r for r in ended if r["id"] in inserted], now)
            elif rows:
                _insert_deliveries(c, rows, returning=False)
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
            if finished and pg:
                c.execute(_ROUTING_FINISHED, {"b_ids": finished, "b_now": now})
            elif finished:
                sqlite_hot.routing_finished(c, finished, now)
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
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> RecipientContext:
            ctx = RecipientContext(users={}, preferences={}, devices={}, suppressed={})
            read = _ctx_rows_pg if pg else sqlite_hot.recipient_rows
            for i in range(0, len(ids), sqlite_hot.CHUNK):
                users, preferences, settings, devices, suppressed = read(
                    c, ids[i : i + sqlite_hot.CHUNK], with_devices=with_devices
                )
                for row in users:
                    ctx.users[row.id] = _user(row)
                for row in preferences:
                    prefs = ctx.preferences.setdefault(row.user_id, Preferences(user_id=row.user_id))
                    if row.category == "*":
                        prefs.channels[row.channel] = bool(row.enabled)
                    else:
                        prefs.categories.setdefault(row.category, {})[row.channel] = bool(row.enabled)
                for row in settings:
                    prefs = ctx.preferences.setdefault(row.user_id, Preferences(user_id=row.user_id))
                    prefs.quiet_hours = _loads(row.quiet_hours)
                    prefs.digests = _loads(row.digests) or {}
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
                .where(d.c.notification_id == notification_id, d.c.status.in_(_in(CANCELLABLE)))
                .values(status=S.CANCELLED.value, reason=Reason.CANCELLED.value, updated_at=now, due_at=now)
            ).rowcount
            final = c.execute(
                select(func.count())
                .select_from(d)
                .where(d.c.notification_id == notification_id, d.c.status.not_in([S.CANCELLED.value]))
            ).scalar_one()
            return cancelled, int(final)

        return await self.db.run(op)

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
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> list[str]:
            # A result given twice counts once: the first.
            batch: dict[str, DeliveryResult] = {}
            for r in results:
                check_transition(S.SENDING, r.new_status)
                batch.setdefault(r.delivery_id, r)
            # {delivery id: (channel, priority, due_at after the change)} of the rows changed:
            # those still in ``sending`` under the result's lease.
            if pg:
                changed = _apply_results_pg(c, batch, now)
            else:
                changed = sqlite_hot.apply_results(c, batch, now, _result_params)
            attempts: list[dict[str, Any]] = []
            requeued: list[tuple[str, str, int, float]] = []  # outbox rows (broker queue only)
            tally = Tally()  # the funnel's counts (sql_rollups.py), written last
            for r in batch.values():
                row = changed.get(r.delivery_id)
                if row is None:
                    continue
                channel = row.channel
                if self.outbox and r.new_status.value in _CLAIMABLE:
                    requeued.append((r.delivery_id, channel, row.priority, row.due_at))
                at = r.attempt
                counted = result_metrics(r.new_status, r.reason, at.outcome)
                if counted:
                    tally.add(row.created_at, row.template, row.category, channel, at.provider, counted)
                attempts.append(
                    {
                        "delivery_id": r.delivery_id,
                        "n": at.n,
                        "at": at.at,
                        "provider": at.provider,
                        "outcome": at.outcome.value,
                        # PostgreSQL enforces VARCHAR(64) (SQLite does not): a provider's long
                        # error name must not make the whole batch fail, forever.
                        "code": at.code[:64] if at.code else at.code,
                        "detail": at.detail,
                        "latency_ms": at.latency_ms,
                        "ambiguous": at.ambiguous,
                    }
                )
                if r.fallback and r.new_status in (S.FAILED, S.DEAD):
                    # Same transaction: the notification goes back to the router, which hands
                    # this recipient to the next channel of the chain (see RouterService).
                    reopen_for_fallback(c, r.notification_id)
                if r.dead_address:
                    self._suppress(c, channel, r.dead_address, r.reason or "invalid_address", now)
            if attempts and pg:
                pg_batch.INSERT_ATTEMPTS.execute(c, attempts)
            elif attempts:
                sqlite_hot.insert_attempts(c, attempts)
            if requeued:
                add_outbox(c, requeued, now)
            bump(c, tally)
            # Rejected: lost its lease (or not sending any more), or given twice.
            return [
                r.delivery_id
                for r in results
                if batch.get(r.delivery_id) is not r or r.delivery_id not in changed
            ]

        return await self.db.run(op)

    def _suppress(self, c: Connection, channel: str, address: str, reason: str, now: float) -> None:
        if channel == "push":
            c.execute(
                update(t.devices)
                .where(t.devices.c.token == address, t.devices.c.active.is_(True))
                .values(active=False, deactivated_at=now)
            )
            return
        c.execute(
            self._ins(t.suppressions)
            .values(channel=channel, address=address, reason=reason, created_at=now)
            .on_conflict_do_nothing()
        )

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

    async def promote_scheduled(
        self, *, now: float, limit: int | None = None, ranks: Sequence[int] | None = None
    ) -> Promoted:
        pg = self.db.dialect == "postgresql"

        def op(c: Connection) -> Promoted:
            if limit is None and ranks is None:
                rows = list(c.execute(PROMOTE_SCHEDULED, {"b_now": now}))
            else:
                rows = []
                for rank in sorted(ranks) if ranks is not None else _RANKS:
                    left = _NO_LIMIT if limit is None else limit - len(rows)
                    if left <= 0:
                        break
                    params = {"b_rank": rank, "b_now": now, "b_limit": left}
                    ids = list(c.execute(PICK_DUE_LANE[pg], params).scalars())
                    if ids:
                        rows.extend(c.execute(PROMOTE_IDS[pg], {"b_ids": ids, "b_now": now}))
            if self.outbox:
                add_outbox(c, [(r.id, r.channel, r.priority, r.due_at) for r in rows], now)
            return Promoted(sorted({r.channel for r in rows}), len(rows))

        return await self.db.run(op)

    async def expire_deliveries(self, *, now: float) -> int:
        d = t.deliveries
        waiting = _in(sources_of(S.SKIPPED) - {S.SENDING, S.PENDING})

        def op(c: Connection) -> list[str]:
            if self.db.is_sqlite:
                params = {"skipped": S.SKIPPED.value, "now": now}
                ids = list(c.execute(SQLITE_EXPIRY_SWEEP, params).scalars())
            else:
                ids = list(
                    c.execute(
                        update(d)
                        .where(d.c.status.in_(waiting), d.c.expires_at.is_not(None), d.c.expires_at <= now)
                        .values(status=S.SKIPPED.value, reason=Reason.EXPIRED.value, updated_at=now)
                        .returning(d.c.id)
                    ).scalars()
                )
            count_changed(c, ids, ("skipped:expired",))  # the funnel, same transaction
            return ids

        expired = await self.db.run(op)
        for i in expired:  # each skip told once, after its commit (herald.domain.audience)
            log.info(SKIPPED_EVENT, **skipped_fields(i, Reason.EXPIRED))
        return len(expired)

    async def reclaim_expired_leases(self, *, now: float) -> list[str]:
        d, a = t.deliveries, t.attempts

        def op(c: Connection) -> list[str]:
            rows = c.execute(
                update(d)
                .where(d.c.status == S.SENDING.value, d.c.lease_until < now)
                .values(
                    status=S.RETRYING.value,
                    due_at=now,
                    lease_owner=None,
                    lease_until=None,
                    retry_count=d.c.retry_count + 1,
                    budget_used=d.c.budget_used + 1,
                    updated_at=now,
                )
                .returning(d.c.id, d.c.channel, d.c.retry_count, d.c.provider, d.c.priority)
            ).all()
            if rows and self.outbox:
                add_outbox(c, [(r.id, r.channel, r.priority, now) for r in rows], now)
            if rows:
                c.execute(
                    insert(a),
                    [
                        {
                            "delivery_id": r.id,
                            "n": r.retry_count,
                            "at": now,
                            "provider": r.provider or "unknown",
                            "outcome": Outcome.LOST.value,
                            "code": None,
                            "detail": "worker lost its lease mid-send; the provider may have the message",
                            "latency_ms": None,
                            "ambiguous": True,
                        }
                        for r in rows
                    ],
                )
            return sorted({r.channel for r in rows})

        return await self.db.run(op)

    async def next_due(self, *, now: float) -> float | None:
        d = t.deliveries

        def op(c: Connection) -> float | None:
            best: float | None = None
            for status in (SCHEDULED, d.c.status == S.RETRYING.value):
                v = c.execute(select(func.min(d.c.due_at)).where(status, d.c.due_at > now)).scalar()
                if v is not None and (best is None or v < best):
                    best = float(v)
            lease = c.execute(select(func.min(d.c.lease_until)).where(d.c.status == S.SENDING.value)).scalar()
            if lease is not None and (best is None or lease < best):
                best = float(lease)
            return best

        return await self.db.run(op)

    # Dead letters: listed by SqlDeadLettersMixin (sql_dead_letters.py) ----------------------
    async def replay_dead_letters(self, delivery_ids: Sequence[str], *, now: float) -> list[Delivery]:
        d = t.deliveries
        ids = list(delivery_ids)

        def op(c: Connection) -> list[Delivery]:
            out: list[Delivery] = []
            for i in range(0, len(ids), 500):
                rows = c.execute(
                    update(d)
                    .where(d.c.id.in_(ids[i : i + 500]), d.c.status == S.DEAD.value)
                    .values(
                        status=S.QUEUED.value,
                        reason=None,
                        due_at=now,
                        queued_at=now,
                        updated_at=now,
                        failed_at=None,
                        budget_used=0,
                    )
                    .returning(*d.c)
                ).all()
                if self.outbox:
                    add_outbox(c, [(r.id, r.channel, r.priority, r.due_at) for r in rows], now)
                out.extend(_delivery(r) for r in rows)
            return out

        return await self.db.run(op)

    async def find_delivery(self, provider_message_id: str) -> Delivery | None:
        d = t.deliveries

        def op(c: Connection) -> Delivery | None:
            row = c.execute(select(d).where(d.c.provider_message_id == provider_message_id).limit(1)).first()
            return _delivery(row) if row else None

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

    # Suppressions -----------------------------------------------------------------------------
    async def suppress_address(self, channel: str, address: str, reason: str, *, now: float) -> None:
        await self.db.run(lambda c: self._suppress(c, channel, address, reason, now))

    async def suppressed(self, channel: str, addresses: Sequence[str]) -> set[str]:
        s = t.suppressions
        addrs = list(dict.fromkeys(addresses))

        def op(c: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(addrs), 500):
                out.update(
                    c.execute(
                        select(s.c.address).where(s.c.channel == channel, s.c.address.in_(addrs[i : i + 500]))
                    ).scalars()
                )
            return out

        return await self.db.run(op)

    # Inbox -------------------------------------------------------------------------------------
    async def list_inbox(
        self, user_id: str, *, unread_only: bool, cursor: str | None, limit: int
    ) -> tuple[list[Delivery], int]:
        d = t.deliveries
        visible = [S.SENT.value, S.DELIVERED.value, S.READ.value]
        unread = [S.SENT.value, S.DELIVERED.value]

        def op(c: Connection) -> tuple[list[Delivery], int]:
            base = and_(d.c.user_id == user_id, d.c.channel == "in_app")
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
                        d.c.channel == "in_app",
                        d.c.status.in_([S.SENT.value, S.DELIVERED.value]),
                    )
                    .values(status=S.READ.value, read_at=now, updated_at=now)
                    .returning(d.c.id)
                ).scalars()
            )
            count_changed(c, ids, ("opened",))  # an in-app message read is opened (the funnel)
            return len(ids)

        return await self.db.run(op)

    # Stats ----------------------------------------------------------------------------------
    async def delivery_counts(self, *, since: float | None = None) -> list[tuple[str, str, str | None, int]]:
        d = t.deliveries

        def op(c: Connection) -> list[tuple[str, str, str | None, int]]:
            q = select(d.c.channel, d.c.status, d.c.provider, func.count()).group_by(
                d.c.channel, d.c.status, d.c.provider
            )
            if since is not None:
                q = q.where(d.c.created_at >= since)
            return [(r[0], r[1], r[2], int(r[3])) for r in c.execute(q)]

        return await self.db.run(op)

    async def queue_depth(self) -> list[tuple[str, int, int]]:
        d = t.deliveries

        def op(c: Connection) -> list[tuple[str, int, int]]:
            q = (
                select(d.c.channel, d.c.priority, func.count())
                .where(or_(d.c.status == S.QUEUED.value, d.c.status == S.RETRYING.value))
                .group_by(d.c.channel, d.c.priority)
            )
            return [(r[0], int(r[1]), int(r[2])) for r in c.execute(q)]

        return await self.db.run(op)

    async def ambiguous_count(self) -> int:
        a = t.attempts
        return await self.db.run(
            lambda c: int(
                c.execute(select(func.count()).select_from(a).where(a.c.ambiguous.is_(True))).scalar_one()
            )
        )

    # Housekeeping ------------------------------------------------------------------------------
    async def maintain(self) -> list[str]:
        """PostgreSQL: ``VACUUM (ANALYZE)`` the queue tables whose dead rows passed a threshold.

        Every delivery leaves two or three dead row versions (routing, claim, result) and every
        outbox row one or two, and each claim walks the index entries of the dead ones until a
        vacuum removes them. PostgreSQL's autovacuum looks once a minute at best, and may be off
        (it was, on the machine of the benchmarks: 200,000 dead outbox rows under nine live ones,
        1.5 ms a relay pass). The scheduler calls this every few seconds; it costs one look at the
        table statistics when nothing is due.
        """
        if self.db.dialect != "postgresql":
            return []
        counts = await self.db.run(lambda c: c.execute(_DEAD_ROWS, {"tables": list(_MAINTAINED)}).all())
        due = [
            row.relname
            for row in counts
            if row.n_dead_tup >= max(_MAINTAINED[row.relname], _DEAD_FRACTION * row.n_live_tup)
        ]
        for table in due:
            await self.db.run_outside_transaction(f"VACUUM (ANALYZE) {table}")
        return due
