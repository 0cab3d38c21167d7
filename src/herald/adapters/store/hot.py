"""The store's hot operations, each written once in SQLAlchemy Core for any dialect.

Routing writes every delivery once and reads every recipient once; senders record every
result; the scheduler sweeps expired deliveries. Each dialect has a faster way to run these
(:mod:`sqlite_hot`: the ``sqlite3`` driver itself, statements built once; :mod:`pg_batch`: one
array parameter per column, one statement text whatever the batch size). The three modules
offer the same functions with the same signatures and results:

=====================  ================================================================
``insert_deliveries``  insert delivery rows, skipping existing ones (optionally returning)
``routing_held``       the notifications whose routing lease an owner still holds
``routing_finished``   mark notifications routed, their lease released
``recipient_rows``     users, preferences, settings, devices and suppressions of ids
``apply_results``      the results of sends whose lease is still the sender's
``insert_attempts``    the attempts of those results
``expire``             move expired waiting deliveries to ``skipped``/``expired``
``bump_rollups``       add counts to the funnel's rollups (sql_rollups.py)
=====================  ================================================================

The functions here are the reference: ``tests/contract/test_store_hot_paths.py`` runs every
one of them and the fast path of each database on the same rows and compares what they return
and leave. The statements are built here once per dialect (:func:`per_dialect`: PostgreSQL
takes an id list as one array, SQLite as an expanding ``IN``); the fast paths run these
constructs (PostgreSQL) or compile them once per number of ids (SQLite), except the batch
writes of :mod:`pg_batch` (``unnest``), which SQLAlchemy cannot express.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Integer,
    String,
    any_,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)

from herald.adapters.store import schema as t
from herald.adapters.store.rows import DELIVERY_COLUMNS, Changed, result_values, status_values
from herald.domain.addresses import ADDRESS_FIELDS
from herald.domain.models import DeliveryResult, DeliveryStatus, NotificationStatus, Reason
from herald.domain.states import sources_of

S = DeliveryStatus
T = TypeVar("T")
CHUNK = 500  # ids per IN list: far below SQLite's limit on parameters (32,766)
_D, _N, _U, _SP = t.deliveries, t.notifications, t.users, t.suppressions


def ids_in(column: ColumnElement[Any], pg: bool, name: str = "b_ids") -> ColumnElement[bool]:
    """``column IN (:name…)``: on PostgreSQL ``column = ANY(:name)`` with one array parameter
    (one statement text whatever the number of ids), elsewhere an expanding parameter."""
    if pg:
        item: Any = BigInteger() if isinstance(column.type, Integer) else String()
        return column == any_(bindparam(name, type_=ARRAY(item)))
    return column.in_(bindparam(name, expanding=True))


def per_dialect(build: Callable[[bool], T]) -> tuple[T, T]:
    """A statement built once for SQLite (``[False]``) and once for PostgreSQL (``[True]``)."""
    return build(False), build(True)


def _pg(c: Connection) -> bool:
    return c.dialect.name == "postgresql"


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]


def _insert(c: Connection) -> Any:
    """The dialect's ``insert`` (it has ``on_conflict_do_nothing``)."""
    if c.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql  # noqa: PLC0415 - loaded on PostgreSQL only

        return postgresql.insert
    from sqlalchemy.dialects import sqlite  # noqa: PLC0415

    return sqlite.insert


# -- routing: the deliveries of a routing pass ---------------------------------------------------
INSERTED = (_D.c.id, _D.c.channel, _D.c.priority, _D.c.due_at, _D.c.status)  # what a write returns


def insert_deliveries(c: Connection, rows: Sequence[dict[str, Any]], *, returning: bool) -> list[Any]:
    """Insert delivery rows (dicts of :data:`~rows.DELIVERY_COLUMNS`), skipping any that exist;
    with ``returning``, the inserted rows' id, channel, priority, due_at and status."""
    if not rows:
        return []
    out: list[Any] = []
    for i in range(0, len(rows), CHUNK // 2):
        part = [{col: r[col] for col in DELIVERY_COLUMNS} for r in rows[i : i + CHUNK // 2]]
        stmt = _insert(c)(_D).values(part).on_conflict_do_nothing()
        if returning:
            out.extend(c.execute(stmt.returning(*INSERTED)).all())
        else:
            c.execute(stmt)
    return out


# -- routing: the notifications' side of a routing write -----------------------------------------
ROUTING = NotificationStatus.ROUTING.value
ROUTED = NotificationStatus.ROUTED.value


def _routing_held(pg: bool) -> Any:
    stmt = select(_N.c.id).where(
        ids_in(_N.c.id, pg),
        # ``|| ''``: by primary key, never the status index. PostgreSQL (scale-out flood): 2.7
        # ms a routing pass reading routed notifications; SQLite without statistics likewise.
        (_N.c.status + literal("")) == ROUTING,
        _N.c.lease_owner == bindparam("b_owner"),
    )
    # PostgreSQL: the leases stay ours until commit (claim_unrouted skips locked rows), locked
    # in one order. SQLite's one writer needs no lock.
    return stmt.order_by(_N.c.id).with_for_update() if pg else stmt


ROUTING_HELD = per_dialect(_routing_held)
ROUTING_FINISHED = per_dialect(
    lambda pg: (
        update(_N)
        .where(ids_in(_N.c.id, pg))
        .values(
            status=ROUTED,
            routed_at=bindparam("b_now"),
            lease_owner=None,
            lease_until=None,
            recipients_routed=_N.c.recipients_total,
        )
    )
)


def routing_held(c: Connection, ids: Sequence[str], owner: str) -> set[str]:
    """Which of the notifications ``ids`` ``owner`` still holds the routing lease of."""
    stmt = ROUTING_HELD[_pg(c)]
    held: set[str] = set()
    for part in _chunks(ids):
        held.update(c.execute(stmt, {"b_ids": part, "b_owner": owner}).scalars())
    return held


def routing_finished(c: Connection, ids: Sequence[str], now: float) -> None:
    """Mark the notifications ``ids`` routed (every recipient), their routing lease released."""
    stmt = ROUTING_FINISHED[_pg(c)]
    for part in _chunks(ids):
        c.execute(stmt, {"b_ids": part, "b_now": now})


# -- routing: what it reads of the recipients ---------------------------------------------------
PREFERENCE_COLUMNS = ("user_id", "channel", "category", "enabled")
SETTING_COLUMNS = ("user_id", "quiet_hours", "digests")


class RecipientReads(NamedTuple):
    """The reads of :func:`recipient_rows`, each over the ids ``b_ids``."""

    users: Any
    preferences: Any
    settings: Any
    devices: Any  # active ones, oldest first
    suppressed: dict[str, Any]  # {channel: the suppressed addresses of the users on it}


def _recipient_reads(pg: bool) -> RecipientReads:
    prefs, settings, devices = t.user_preferences, t.user_settings, t.devices
    return RecipientReads(
        select(_U).where(ids_in(_U.c.id, pg)),
        select(*(prefs.c[k] for k in PREFERENCE_COLUMNS)).where(ids_in(prefs.c.user_id, pg)),
        select(*(settings.c[k] for k in SETTING_COLUMNS)).where(ids_in(settings.c.user_id, pg)),
        select(devices)
        .where(ids_in(devices.c.user_id, pg), devices.c.active.is_(True))
        .order_by(devices.c.created_at),
        {
            # By the users' column of the channel's address (the domain's one map).
            channel: select(_SP.c.address)
            .select_from(_SP.join(_U, _SP.c.address == _U.c[column]))
            .where(_SP.c.channel == channel, ids_in(_U.c.id, pg))
            for channel, column in ADDRESS_FIELDS.items()
        },
    )


RECIPIENT_READS = per_dialect(_recipient_reads)


def recipient_rows(
    c: Connection, ids: Sequence[str], *, with_devices: bool
) -> tuple[list[Any], list[Any], list[Any], list[Any], dict[str, set[str]]]:
    """Users, preference rows, settings rows, active devices (oldest first) and suppressed
    addresses per channel of ``ids`` (at most :data:`CHUNK`), as rows with the columns' names."""
    reads = RECIPIENT_READS[_pg(c)]
    chunk = {"b_ids": list(ids)}
    found = {channel: set(c.execute(stmt, chunk).scalars()) for channel, stmt in reads.suppressed.items()}
    return (
        list(c.execute(reads.users, chunk)),
        list(c.execute(reads.preferences, chunk)),
        list(c.execute(reads.settings, chunk)),
        list(c.execute(reads.devices, chunk)) if with_devices else [],
        {channel: addresses for channel, addresses in found.items() if addresses},
    )


# -- sending: the results of a batch of sends ---------------------------------------------------
# One statement for every result. A row changes only while its lease is the sender's (status
# sending, same owner): a result that lost its lease is rejected. Optional columns keep their
# value when the parameter is NULL.
RECORD_RESULT = (
    update(_D)
    .where(
        _D.c.id == bindparam("b_id"), _D.c.status == S.SENDING.value, _D.c.lease_owner == bindparam("b_owner")
    )
    .values(
        status=bindparam("b_status"),
        reason=bindparam("b_reason"),
        provider=bindparam("b_provider"),
        retry_count=bindparam("b_n"),
        budget_used=_D.c.budget_used + bindparam("b_budget"),
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("b_now"),
        sent_at=func.coalesce(bindparam("b_sent_at", type_=Float), _D.c.sent_at),
        provider_message_id=func.coalesce(bindparam("b_message_id", type_=String), _D.c.provider_message_id),
        failed_at=func.coalesce(bindparam("b_failed_at", type_=Float), _D.c.failed_at),
        due_at=func.coalesce(bindparam("b_due_at", type_=Float), _D.c.due_at),
    )
)
# The deliveries of a batch still being sent, with their lease and the keys the funnel's
# rollups (sql_rollups.py) and the queue need: read with the lease, by primary key.
HELD_LEASE_COLUMNS = (
    _D.c.id, _D.c.lease_owner, _D.c.channel, _D.c.priority, _D.c.due_at, _D.c.created_at,
    _D.c.category, _N.c.template, _D.c.user_id,
)  # fmt: skip


def apply_results(c: Connection, batch: dict[str, DeliveryResult], now: float) -> dict[str, Changed]:
    """Apply the results of ``batch`` ({delivery id: result}) whose lease is still the
    sender's. Returns {delivery id: :class:`~rows.Changed`} of the rows changed."""
    ids = sorted(batch)
    changed: dict[str, Changed] = {}
    updates: list[dict[str, Any]] = []
    for i in range(0, len(ids), CHUNK):
        q = (
            select(*HELD_LEASE_COLUMNS)
            .select_from(_D.outerjoin(_N, _N.c.id == _D.c.notification_id))
            .where(_D.c.id.in_(ids[i : i + CHUNK]), _D.c.status == S.SENDING.value)
        )
        for row in c.execute(q):
            delivery_id, owner, channel, priority, due_at, created_at, category, template, user = row
            r = batch[delivery_id]
            if owner is not None and owner == r.lease_owner:
                updates.append(result_values(r, now))
                due = due_at if r.due_at is None else r.due_at
                changed[delivery_id] = Changed(channel, priority, due, created_at, category, template, user)
    if updates:
        c.execute(RECORD_RESULT, updates)
    return changed


def insert_attempts(c: Connection, attempts: Sequence[dict[str, Any]]) -> None:
    """Insert attempt rows (dicts of :data:`~rows.ATTEMPT_COLUMNS`)."""
    if attempts:
        c.execute(insert(t.attempts), list(attempts))


# -- the scheduler: deliveries whose time ran out ----------------------------------------------
# Waiting to be sent (not being sent, not already held back for confirmation).
EXPIRABLE = status_values(sources_of(S.SKIPPED) - {S.SENDING, S.PENDING})
EXPIRE = per_dialect(
    lambda pg: (
        update(_D)
        .where(
            # SQLite: ``|| ''`` or it walks ix_deliveries_lease over every queued delivery each
            # scheduler tick (55 ms with 77,000 queued) instead of reading ix_deliveries_expiry.
            (_D.c.status if pg else _D.c.status + literal("")).in_(EXPIRABLE),
            _D.c.expires_at.is_not(None),
            _D.c.expires_at <= bindparam("b_now"),
        )
        .values(status=S.SKIPPED.value, reason=Reason.EXPIRED.value, updated_at=bindparam("b_now"))
        .returning(_D.c.id)
    )
)


def expire(c: Connection, now: float) -> list[str]:
    """Skip (reason ``expired``) the waiting deliveries whose ``expires_at`` passed; their ids."""
    return list(c.execute(EXPIRE[_pg(c)], {"b_now": now}).scalars())


# -- the funnel: counts bumped in the transaction of the change they count ---------------------
ROLLUP_COLUMNS = ("size", "bucket", "template", "category", "channel", "provider", "metric", "count")
_ROLLUP_KEY = ROLLUP_COLUMNS[:-1]


def rollup_upsert(insert_of: Any) -> Any:
    """``INSERT … ON CONFLICT (key) DO UPDATE SET count = count + excluded.count`` with the
    dialect's ``insert``."""
    r = t.delivery_rollups
    stmt = insert_of(r)
    return stmt.on_conflict_do_update(
        index_elements=[r.c[k] for k in _ROLLUP_KEY], set_={"count": r.c["count"] + stmt.excluded["count"]}
    )


def bump_rollups(c: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Add ``rows`` (tuples of :data:`ROLLUP_COLUMNS`, one per key) to the rollups."""
    if rows:
        c.execute(rollup_upsert(_insert(c)), [dict(zip(ROLLUP_COLUMNS, row, strict=True)) for row in rows])
