"""PostgreSQL statements whose text does not depend on how many rows they carry.

SQLAlchemy writes a batch insert as ``VALUES (...), (...)`` and an expanding ``IN`` as one
placeholder per value, so every batch size is a new statement text: psycopg converts it again
(its query cache is keyed by the text), cannot prepare it, and the server parses and plans it
again. A batch written one row at a time (``executemany``) is one statement execution per row
on the server. Here a batch is one statement with one array parameter per column (``unnest``)
and an id list is one array (``= ANY``): the same text for every batch, converted once by
psycopg, prepared after a few runs, one execution per batch on the server.

Measured in the scale-out drain (``pg_stat_statements``, 50,000 deliveries): results were
recorded one ``UPDATE`` per delivery, 7.2 s of the server's 28 s.

The end of this module is PostgreSQL's side of the store's hot operations: the functions of
:mod:`herald.adapters.store.hot` (the reference), with the same signatures and results, as
:mod:`sqlite_hot` is SQLite's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    CursorResult,
    Float,
    Integer,
    Table,
    text,
)

from herald.adapters.store import hot
from herald.adapters.store import schema as t
from herald.adapters.store.rows import ATTEMPT_COLUMNS, DELIVERY_COLUMNS, Changed, result_values
from herald.domain.models import DeliveryResult, DeliveryStatus


def array_type(column: Any) -> str:
    """The PostgreSQL array type of a column's values."""
    kind = column.type
    if isinstance(kind, Boolean):
        return "boolean[]"
    if isinstance(kind, BigInteger):
        return "bigint[]"
    if isinstance(kind, Integer):
        return "integer[]"
    if isinstance(kind, Float):
        return "double precision[]"
    return "text[]"


def _as_float(values: list[Any]) -> list[Any]:
    # Arrays go in binary (database._send_lists_binary), which refuses a list mixing int and
    # float: a time given as a whole number would fail the whole batch.
    return [None if v is None else float(v) for v in values]


class UnnestInsert:
    """``INSERT INTO table (columns) SELECT * FROM unnest(:col1, :col2, …) suffix``: the rows
    of a batch as one array per column."""

    def __init__(self, table: Table, columns: Sequence[str], suffix: str = "") -> None:
        self.columns = tuple(columns)
        self._floats = {col for col in columns if isinstance(table.c[col].type, Float)}
        arrays = ", ".join(f"CAST(:{col} AS {array_type(table.c[col])})" for col in columns)
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"  # noqa: S608
        self.statement = text(f"{sql} {suffix}".rstrip())

    def params(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        out = {col: [r[col] for r in rows] for col in self.columns}
        for col in self._floats:
            out[col] = _as_float(out[col])
        return out

    def execute(self, c: Connection, rows: Sequence[Mapping[str, Any]]) -> CursorResult[Any]:
        return c.execute(self.statement, self.params(rows))


INSERT_ATTEMPTS = UnnestInsert(t.attempts, ATTEMPT_COLUMNS)
INSERT_OUTBOX = UnnestInsert(t.outbox, ("delivery_id", "channel", "priority", "due_at", "created_at"))


# Results of sends: one statement per batch. A row changes only while its lease is the
# sender's (status sending, same owner): a result that lost its lease is rejected, as with
# SQLite's read-then-update. Optional values keep the column's value when NULL.
RESULT_COLUMNS = (
    ("id", "text"), ("owner", "text"), ("status", "text"), ("reason", "text"),
    ("provider", "text"), ("n", "integer"), ("budget", "integer"), ("sent_at", "double precision"),
    ("message_id", "text"), ("failed_at", "double precision"), ("due_at", "double precision"),
)  # fmt: skip
_RESULT_ARRAYS = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in RESULT_COLUMNS)
_RESULT_NAMES = ", ".join(name for name, _ in RESULT_COLUMNS)
RECORD_RESULTS = text(
    "UPDATE deliveries AS d SET status = v.status, reason = v.reason, provider = v.provider, "  # noqa: S608
    "retry_count = v.n, budget_used = d.budget_used + v.budget, lease_owner = NULL, "
    "lease_until = NULL, updated_at = :now, sent_at = coalesce(v.sent_at, d.sent_at), "
    "provider_message_id = coalesce(v.message_id, d.provider_message_id), "
    "failed_at = coalesce(v.failed_at, d.failed_at), due_at = coalesce(v.due_at, d.due_at) "
    f"FROM unnest({_RESULT_ARRAYS}) AS v({_RESULT_NAMES}) "
    f"WHERE d.id = v.id AND d.status = '{DeliveryStatus.SENDING.value}' AND d.lease_owner = v.owner "
    "RETURNING d.id, d.channel, d.priority, d.due_at, d.created_at, d.category, "
    "(SELECT n.template FROM notifications AS n WHERE n.id = d.notification_id) AS template, d.user_id"
)


def result_params(rows: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """Parameters of :data:`RECORD_RESULTS` for rows keyed by the names of ``RESULT_COLUMNS``."""
    out: dict[str, Any] = {name: [r[name] for r in rows] for name, _ in RESULT_COLUMNS}
    for name, kind in RESULT_COLUMNS:
        if kind == "double precision":
            out[name] = _as_float(out[name])
    out["now"] = now
    return out


# Defined beside the constructs that use them both ways (hot.py); kept here for their callers.
ids_in = hot.ids_in
per_dialect = hot.per_dialect


# -- the hot operations: PostgreSQL's side (sqlite_hot is SQLite's, hot the reference) ------------

# Deliveries as one array per column: SQLAlchemy's multi-row ``VALUES (...), (...)`` for a
# routing page was re-parsed by psycopg every time (20% of herald's time when draining).
INSERT_DELIVERIES_PLAIN = UnnestInsert(t.deliveries, DELIVERY_COLUMNS, "ON CONFLICT DO NOTHING")
INSERT_DELIVERIES_RETURNING = UnnestInsert(
    t.deliveries,
    DELIVERY_COLUMNS,
    "ON CONFLICT DO NOTHING RETURNING " + ", ".join(col.name for col in hot.INSERTED),
)


def insert_deliveries(c: Connection, rows: Sequence[dict[str, Any]], *, returning: bool) -> list[Any]:
    """:func:`hot.insert_deliveries`, one statement for the batch."""
    if not rows:
        return []
    stmt = INSERT_DELIVERIES_RETURNING if returning else INSERT_DELIVERIES_PLAIN
    result = stmt.execute(c, rows)
    return list(result.all()) if returning else []


# The routing leases still ours (locked until commit: claim_unrouted, SKIP LOCKED, cannot take
# one over meanwhile), and the notifications whose routing finished: hot.py's constructs.
ROUTING_HELD = hot.ROUTING_HELD[True]
ROUTING_FINISHED = hot.ROUTING_FINISHED[True]


def routing_held(c: Connection, ids: Sequence[str], owner: str) -> set[str]:
    """:func:`hot.routing_held`, the rows locked until commit."""
    return set(c.execute(ROUTING_HELD, {"b_ids": list(ids), "b_owner": owner}).scalars())


def routing_finished(c: Connection, ids: Sequence[str], now: float) -> None:
    """:func:`hot.routing_finished`."""
    if ids:
        c.execute(ROUTING_FINISHED, {"b_ids": list(ids), "b_now": now})


# Routing reads these for every pass: built once, with the id list as one array parameter
# (building them per pass was most of the pass's time).
_CTX = hot.RECIPIENT_READS[True]


def recipient_rows(
    c: Connection, ids: Sequence[str], *, with_devices: bool
) -> tuple[list[Any], list[Any], list[Any], list[Any], dict[str, set[str]]]:
    """:func:`hot.recipient_rows`."""
    chunk = {"b_ids": list(ids)}
    suppressed = {channel: set(c.execute(stmt, chunk).scalars()) for channel, stmt in _CTX.suppressed.items()}
    return (
        list(c.execute(_CTX.users, chunk)),
        list(c.execute(_CTX.preferences, chunk)),
        list(c.execute(_CTX.settings, chunk)),
        list(c.execute(_CTX.devices, chunk)) if with_devices else [],
        {channel: addresses for channel, addresses in suppressed.items() if addresses},
    )


def apply_results(c: Connection, batch: dict[str, DeliveryResult], now: float) -> dict[str, Changed]:
    """:func:`hot.apply_results`: one ``UPDATE … FROM unnest(…)`` for the batch."""
    ordered = sorted(batch.values(), key=lambda x: x.delivery_id)  # lock rows in one order
    named = [{k[2:]: v for k, v in result_values(r, now).items()} for r in ordered]
    rows = c.execute(RECORD_RESULTS, result_params(named, now))
    return {
        row.id: Changed(
            row.channel, row.priority, row.due_at, row.created_at, row.category, row.template, row.user_id
        )
        for row in rows
    }


def insert_attempts(c: Connection, attempts: Sequence[dict[str, Any]]) -> None:
    """:func:`hot.insert_attempts`, one statement for the batch."""
    if attempts:
        INSERT_ATTEMPTS.execute(c, attempts)


def expire(c: Connection, now: float) -> list[str]:
    """:func:`hot.expire` (PostgreSQL plans it on ix_deliveries_expiry as it is)."""
    return list(c.execute(hot.EXPIRE[True], {"b_now": now}).scalars())


ROLLUP_UPSERT = UnnestInsert(
    t.delivery_rollups,
    hot.ROLLUP_COLUMNS,
    "ON CONFLICT (size, bucket, template, category, channel, provider, metric) "
    "DO UPDATE SET count = delivery_rollups.count + excluded.count",
)


def bump_rollups(c: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """:func:`hot.bump_rollups`, one statement for the batch."""
    if rows:
        ROLLUP_UPSERT.execute(c, [dict(zip(hot.ROLLUP_COLUMNS, row, strict=True)) for row in rows])
