"""SQLite's hottest transactions, run on the driver connection itself.

Routing writes every delivery once and reads every recipient's profile once; senders record
every result. Through SQLAlchemy each of those statements paid its execution path (parameter
processing per row: ``construct_params`` was the top self entry of both SQLite threads in the
embedded drain, with SQLite's one writer lock held meanwhile). Here ``sqlite3`` runs them in C:
``executemany`` over tuples or dicts, and statement texts built once. The claim does the same
(:mod:`herald.adapters.queue.sql`). PostgreSQL keeps its own batched path (:mod:`pg_batch`).

Each function runs inside the transaction the caller's SQLAlchemy connection holds (``BEGIN
IMMEDIATE``, :class:`~herald.adapters.store.database.Database`); the statements are the ones
the SQLAlchemy path runs (the update is compiled from the same construct), so the two agree by
construction and the contract tests hold them to it.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, Float, String, bindparam, func, insert, update
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from herald.adapters.store import schema as t
from herald.domain.models import DeliveryResult, DeliveryStatus

S = DeliveryStatus
CHUNK = 500  # ids per IN list: far below SQLite's limit on parameters (32,766)


def raw(c: Connection) -> sqlite3.Connection:
    """The ``sqlite3`` connection under ``c`` (in ``c``'s transaction)."""
    conn = c.connection.driver_connection
    assert isinstance(conn, sqlite3.Connection)  # only called on SQLite, inside a transaction
    return conn


@functools.lru_cache(maxsize=64)
def marks(n: int, width: int = 1) -> str:
    """``?, ?, …`` for ``n`` values (``(?, ?), (?, ?), …`` for ``n`` rows of ``width``)."""
    one = "?" if width == 1 else "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * n)


def _row(name: str, columns: Iterable[str]) -> Any:
    return namedtuple(name, list(columns))


class NamedStatement:
    """A SQLAlchemy statement compiled once for SQLite with named parameters.

    Values the construct fixes itself (``lease_owner=None``, ``status == 'sending'``) are
    merged into each row; the rest come from the caller's dicts, by the construct's names.
    """

    def __init__(self, stmt: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        compiled = stmt.compile(
            dialect=sqlite_dialect.dialect(paramstyle="named"),
            column_keys=list(column_keys) if column_keys is not None else None,
        )
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.names = tuple(compiled.params)  # every parameter the text names
        self.fixed = {k: v for k, v in compiled.params.items() if not compiled.binds[k].required}

    def executemany(self, conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
        fixed = self.fixed
        conn.executemany(self.sql, [{**fixed, **r} for r in rows] if fixed else rows)


# -- routing: the deliveries of a routing pass ---------------------------------------------------
DELIVERY_COLUMNS = (
    "id", "notification_id", "user_id", "channel", "status", "reason", "priority", "category",
    "address", "content", "provider", "retry_count", "budget_used", "due_at", "expires_at",
    "created_at", "queued_at", "failed_at", "updated_at", "lease_owner", "lease_until", "sending_at",
)  # fmt: skip
_delivery_values = operator.itemgetter(*DELIVERY_COLUMNS)
_INSERT_HEAD = f"INSERT INTO deliveries ({', '.join(DELIVERY_COLUMNS)}) VALUES "  # noqa: S608 - column names
_INSERT_PLAIN = _INSERT_HEAD + "(" + marks(len(DELIVERY_COLUMNS)) + ") ON CONFLICT DO NOTHING"
Inserted = _row("Inserted", ("id", "channel", "priority", "due_at", "status"))
_INSERT_ROWS = 400  # rows per multi-row INSERT … RETURNING (22 parameters a row)


@functools.lru_cache(maxsize=32)
def _insert_returning(n: int) -> str:
    rows = marks(n, len(DELIVERY_COLUMNS))
    return f"{_INSERT_HEAD}{rows} ON CONFLICT DO NOTHING RETURNING id, channel, priority, due_at, status"


def insert_deliveries(c: Connection, rows: Sequence[dict[str, Any]], *, returning: bool) -> list[Any]:
    """Insert delivery rows (dicts of :data:`DELIVERY_COLUMNS`), skipping any that exist; with
    ``returning``, the inserted rows' id, channel, priority, due_at and status."""
    conn = raw(c)
    values = [_delivery_values(r) for r in rows]
    if not returning:
        conn.executemany(_INSERT_PLAIN, values)
        return []
    out: list[Any] = []
    for i in range(0, len(values), _INSERT_ROWS):
        part = values[i : i + _INSERT_ROWS]
        flat = [v for row in part for v in row]
        out.extend(map(Inserted._make, conn.execute(_insert_returning(len(part)), flat).fetchall()))
    return out


# -- routing: the notifications' side of a routing write -----------------------------------------
@functools.lru_cache(maxsize=16)
def _routing_held(n: int) -> str:
    # ``+status``: by primary key, never the status index (the notifications being routed).
    return (
        f"SELECT id FROM notifications WHERE id IN ({marks(n)}) "  # noqa: S608
        "AND +status = 'routing' AND lease_owner = ?"
    )


@functools.lru_cache(maxsize=16)
def _routing_finished(n: int) -> str:
    return (
        "UPDATE notifications SET status = 'routed', routed_at = ?, lease_owner = NULL, "  # noqa: S608
        f"lease_until = NULL, recipients_routed = recipients_total WHERE id IN ({marks(n)})"
    )


def routing_held(c: Connection, ids: Sequence[str], owner: str) -> set[str]:
    """Which of the notifications ``ids`` ``owner`` still holds the routing lease of."""
    conn = raw(c)
    held: set[str] = set()
    for i in range(0, len(ids), CHUNK):
        part = list(ids[i : i + CHUNK])
        held.update(row[0] for row in conn.execute(_routing_held(len(part)), [*part, owner]))
    return held


def routing_finished(c: Connection, ids: Sequence[str], now: float) -> None:
    """Mark the notifications ``ids`` routed (every recipient), their routing lease released."""
    conn = raw(c)
    for i in range(0, len(ids), CHUNK):
        part = list(ids[i : i + CHUNK])
        conn.execute(_routing_finished(len(part)), [now, *part])


@functools.lru_cache(maxsize=32)
def _insert(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{col}" for col in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608 - names from the schema


def insert_rows(c: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """``INSERT`` the dicts ``rows`` (all with the same keys, which are ``table``'s columns)."""
    if rows:
        raw(c).executemany(_insert(table.name, tuple(rows[0])), rows)


# -- routing: what it reads of the recipients ---------------------------------------------------
def _columns(table: Any) -> tuple[str, ...]:
    return tuple(col.name for col in table.c)


UserRow = _row("UserRow", _columns(t.users))
DeviceRow = _row("DeviceRow", _columns(t.devices))
PreferenceRow = _row("PreferenceRow", ("user_id", "channel", "category", "enabled"))
SettingRow = _row("SettingRow", ("user_id", "quiet_hours", "digests"))
_SUPPRESSED_BY = {"email": "email", "sms": "phone", "webhook": "webhook_url"}  # channel: users column


@functools.lru_cache(maxsize=16)
def _recipient_sql(n: int) -> tuple[str, str, str, str, dict[str, str]]:
    ids = marks(n)
    users = f"SELECT {', '.join(UserRow._fields)} FROM users WHERE id IN ({ids})"  # noqa: S608
    prefs = f"SELECT user_id, channel, category, enabled FROM user_preferences WHERE user_id IN ({ids})"  # noqa: S608
    settings = f"SELECT user_id, quiet_hours, digests FROM user_settings WHERE user_id IN ({ids})"  # noqa: S608
    devices = (
        f"SELECT {', '.join(DeviceRow._fields)} FROM devices "  # noqa: S608
        f"WHERE user_id IN ({ids}) AND active = 1 ORDER BY created_at"
    )
    suppressed = {
        channel: "SELECT suppressions.address FROM suppressions JOIN users "  # noqa: S608
        f"ON suppressions.address = users.{column} WHERE suppressions.channel = '{channel}' "
        f"AND users.id IN ({ids})"
        for channel, column in _SUPPRESSED_BY.items()
    }
    return users, prefs, settings, devices, suppressed


def recipient_rows(
    c: Connection, ids: Sequence[str], *, with_devices: bool
) -> tuple[list[Any], list[Any], list[Any], list[Any], dict[str, set[str]]]:
    """Users, preference rows, settings rows, active devices (oldest first) and suppressed
    addresses per channel of ``ids`` (at most :data:`CHUNK`), as named tuples with the
    columns' names."""
    conn = raw(c)
    users, prefs, settings, devices, suppressed = _recipient_sql(len(ids))
    found = {channel: {row[0] for row in conn.execute(sql, ids)} for channel, sql in suppressed.items()}
    return (
        list(map(UserRow._make, conn.execute(users, ids))),
        list(map(PreferenceRow._make, conn.execute(prefs, ids))),
        list(map(SettingRow._make, conn.execute(settings, ids))),
        list(map(DeviceRow._make, conn.execute(devices, ids))) if with_devices else [],
        {channel: addresses for channel, addresses in found.items() if addresses},
    )


# -- sending: the results of a batch of sends ---------------------------------------------------
# One prepared statement for every result. Optional columns keep their value when the parameter
# is NULL.
_D = t.deliveries
RECORD_RESULT = NamedStatement(
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
ATTEMPT_COLUMNS = (
    "delivery_id", "n", "at", "provider", "outcome", "code", "detail", "latency_ms", "ambiguous",
)  # fmt: skip
INSERT_ATTEMPTS = NamedStatement(insert(t.attempts), ATTEMPT_COLUMNS)


class Changed(NamedTuple):
    """A delivery a result changed: its queue keys after the change, and its rollup keys."""

    channel: str
    priority: int
    due_at: float
    created_at: float
    category: str
    template: str | None


@functools.lru_cache(maxsize=16)
def _held_leases(n: int) -> str:
    # ``+status``: by primary key. Without statistics SQLite plans ``status = 'sending'`` on
    # ix_deliveries_lease and reads every delivery being sent (as the claim would, see
    # queue/sql.py).
    # The notification's template and the delivery's category and creation time: the funnel
    # rollups' keys (sql_rollups.py), read with the lease, by primary key on both tables.
    return (
        "SELECT d.id, d.lease_owner, d.channel, d.priority, d.due_at, d.created_at, d.category, "  # noqa: S608
        "n.template FROM deliveries AS d LEFT JOIN notifications AS n ON n.id = d.notification_id "
        f"WHERE d.id IN ({marks(n)}) AND +d.status = 'sending'"
    )


def apply_results(
    c: Connection,
    batch: dict[str, DeliveryResult],
    now: float,
    params: Callable[[DeliveryResult, float], dict[str, Any]],
) -> dict[str, Changed]:
    """The held leases read once (the write lock keeps them until commit), then one
    ``executemany`` for the results whose lease is still the sender's. Returns {delivery id:
    :class:`Changed`} of the rows changed."""
    conn = raw(c)
    ids = list(batch)
    changed: dict[str, Changed] = {}
    updates: list[dict[str, Any]] = []
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        for delivery_id, owner, channel, priority, due_at, created_at, category, template in conn.execute(
            _held_leases(len(part)), part
        ):
            r = batch[delivery_id]
            if owner is not None and owner == r.lease_owner:
                updates.append(params(r, now))
                due = due_at if r.due_at is None else r.due_at
                changed[delivery_id] = Changed(channel, priority, due, created_at, category, template)
    if updates:
        RECORD_RESULT.executemany(conn, updates)
    return changed


def insert_attempts(c: Connection, attempts: Sequence[dict[str, Any]]) -> None:
    INSERT_ATTEMPTS.executemany(raw(c), attempts)
