"""SQLite's hottest transactions, run on the driver connection itself.

Routing writes every delivery once and reads every recipient's profile once; senders record
every result. Through SQLAlchemy each of those statements paid its execution path (parameter
processing per row: ``construct_params`` was the top self entry of both SQLite threads in the
embedded drain, with SQLite's one writer lock held meanwhile). Here ``sqlite3`` runs them in C:
``executemany`` over tuples or dicts, and statement texts built once. The claim does the same
(:mod:`herald.adapters.queue.sql`). PostgreSQL keeps its own batched path (:mod:`pg_batch`).

Each function runs inside the transaction the caller's SQLAlchemy connection holds (``BEGIN
IMMEDIATE``, :class:`~herald.adapters.store.database.Database`) and is the twin of the function
of the same name in :mod:`herald.adapters.store.hot` (the reference, in SQLAlchemy Core). The
statements are compiled from the reference's constructs (:class:`NamedStatement`,
:class:`PositionalStatement`: once, or once per number of ids), except two texts SQLAlchemy
would not write as SQLite needs them: the multi-row delivery insert (one ``VALUES`` list per
batch size) and the read of a result batch's leases (``+d.status``: by primary key). Both name
the columns of ``rows``/``hot`` and the domain's status values. ``tests/unit/
test_hot_statements.py`` pins their plans; ``tests/contract/test_store_hot_paths.py`` holds
each function to its reference twin on the same rows.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections import namedtuple
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from herald.adapters.store import hot
from herald.adapters.store import schema as t
from herald.adapters.store.rows import ATTEMPT_COLUMNS, DELIVERY_COLUMNS, Changed, result_values
from herald.domain.models import DeliveryResult, DeliveryStatus

S = DeliveryStatus
CHUNK = hot.CHUNK


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


class _Id:
    """Stands for the ``i``-th id while a statement's text is built."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


class PositionalStatement:
    """A SQLAlchemy statement compiled for SQLite with ``?`` parameters, its text built once
    per number of ids (its expanding parameter ``b_ids``), with where each value goes."""

    _ID, _NAMED, _FIXED = 0, 1, 2

    def __init__(self, stmt: ClauseElement) -> None:
        compiled = stmt.compile(dialect=sqlite_dialect.dialect())
        assert isinstance(compiled, SQLCompiler)
        self._compiled = compiled
        self._named = {k for k, b in compiled.binds.items() if b.required and k != "b_ids"}
        self._texts: dict[int, tuple[str, tuple[tuple[int, Any], ...]]] = {}

    def text(self, n: int) -> tuple[str, tuple[tuple[int, Any], ...]]:
        """The text for ``n`` ids, and per ``?``: (_ID, index), (_NAMED, name) or (_FIXED, value)."""
        got = self._texts.get(n)
        if got is None:
            params = dict(self._compiled.params)
            if "b_ids" in params:
                params["b_ids"] = [_Id(i) for i in range(n)]
            state = self._compiled.construct_expanded_state(params)
            slots: list[tuple[int, Any]] = []
            for name, value in zip(state.positiontup or (), state.positional_parameters, strict=True):
                if isinstance(value, _Id):
                    slots.append((self._ID, value.i))
                elif name in self._named:
                    slots.append((self._NAMED, name))
                else:
                    slots.append((self._FIXED, value))
            got = self._texts[n] = (state.statement, tuple(slots))
        return got

    def execute(self, conn: sqlite3.Connection, ids: Sequence[Any] = (), **named: Any) -> sqlite3.Cursor:
        sql, slots = self.text(len(ids))
        args = [ids[x] if kind == self._ID else named[x] if kind == self._NAMED else x for kind, x in slots]
        return conn.execute(sql, args)


# -- routing: the deliveries of a routing pass ---------------------------------------------------
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
ROUTING_HELD = PositionalStatement(hot.ROUTING_HELD[False])
ROUTING_FINISHED = PositionalStatement(hot.ROUTING_FINISHED[False])


def routing_held(c: Connection, ids: Sequence[str], owner: str) -> set[str]:
    """Which of the notifications ``ids`` ``owner`` still holds the routing lease of."""
    conn = raw(c)
    held: set[str] = set()
    for i in range(0, len(ids), CHUNK):
        held.update(row[0] for row in ROUTING_HELD.execute(conn, ids[i : i + CHUNK], b_owner=owner))
    return held


def routing_finished(c: Connection, ids: Sequence[str], now: float) -> None:
    """Mark the notifications ``ids`` routed (every recipient), their routing lease released."""
    conn = raw(c)
    for i in range(0, len(ids), CHUNK):
        ROUTING_FINISHED.execute(conn, ids[i : i + CHUNK], b_now=now)


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
PreferenceRow = _row("PreferenceRow", hot.PREFERENCE_COLUMNS)
SettingRow = _row("SettingRow", hot.SETTING_COLUMNS)


_READS = hot.RECIPIENT_READS[False]
USERS = PositionalStatement(_READS.users)
PREFERENCES = PositionalStatement(_READS.preferences)
SETTINGS = PositionalStatement(_READS.settings)
DEVICES = PositionalStatement(_READS.devices)
SUPPRESSED = {channel: PositionalStatement(stmt) for channel, stmt in _READS.suppressed.items()}


def recipient_rows(
    c: Connection, ids: Sequence[str], *, with_devices: bool
) -> tuple[list[Any], list[Any], list[Any], list[Any], dict[str, set[str]]]:
    """Users, preference rows, settings rows, active devices (oldest first) and suppressed
    addresses per channel of ``ids`` (at most :data:`CHUNK`), as named tuples with the
    columns' names."""
    conn = raw(c)
    found = {channel: {row[0] for row in stmt.execute(conn, ids)} for channel, stmt in SUPPRESSED.items()}
    return (
        list(map(UserRow._make, USERS.execute(conn, ids))),
        list(map(PreferenceRow._make, PREFERENCES.execute(conn, ids))),
        list(map(SettingRow._make, SETTINGS.execute(conn, ids))),
        list(map(DeviceRow._make, DEVICES.execute(conn, ids))) if with_devices else [],
        {channel: addresses for channel, addresses in found.items() if addresses},
    )


# -- sending: the results of a batch of sends ---------------------------------------------------
# One prepared statement for every result (compiled from the reference's construct).
RECORD_RESULT = NamedStatement(hot.RECORD_RESULT)
INSERT_ATTEMPTS = NamedStatement(insert(t.attempts), ATTEMPT_COLUMNS)


@functools.lru_cache(maxsize=16)
def _held_leases(n: int) -> str:
    # ``+status``: by primary key. Without statistics SQLite plans ``status = 'sending'`` on
    # ix_deliveries_lease and reads every delivery being sent (as the claim would, see
    # queue/sql.py).
    # The notification's template and the delivery's category and creation time: the funnel
    # rollups' keys (sql_rollups.py), read with the lease, by primary key on both tables.
    return (
        "SELECT d.id, d.lease_owner, d.channel, d.priority, d.due_at, d.created_at, d.category, "  # noqa: S608
        "n.template, d.user_id FROM deliveries AS d LEFT JOIN notifications AS n ON n.id = d.notification_id "
        f"WHERE d.id IN ({marks(n)}) AND +d.status = '{S.SENDING.value}'"
    )


def apply_results(c: Connection, batch: dict[str, DeliveryResult], now: float) -> dict[str, Changed]:
    """The held leases read once (the write lock keeps them until commit), then one
    ``executemany`` for the results whose lease is still the sender's. Returns {delivery id:
    :class:`Changed`} of the rows changed."""
    conn = raw(c)
    ids = list(batch)
    changed: dict[str, Changed] = {}
    updates: list[dict[str, Any]] = []
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        for row in conn.execute(_held_leases(len(part)), part):
            delivery_id, owner, channel, priority, due_at, created_at, category, template, user = row
            r = batch[delivery_id]
            if owner is not None and owner == r.lease_owner:
                updates.append(result_values(r, now))
                due = due_at if r.due_at is None else r.due_at
                changed[delivery_id] = Changed(channel, priority, due, created_at, category, template, user)
    if updates:
        RECORD_RESULT.executemany(conn, updates)
    return changed


def insert_attempts(c: Connection, attempts: Sequence[dict[str, Any]]) -> None:
    """Insert attempt rows (dicts of :data:`~rows.ATTEMPT_COLUMNS`)."""
    if attempts:
        INSERT_ATTEMPTS.executemany(raw(c), attempts)


# -- the scheduler: deliveries whose time ran out ----------------------------------------------
EXPIRE = PositionalStatement(hot.EXPIRE[False])


def expire(c: Connection, now: float) -> list[str]:
    """Skip (reason ``expired``) the waiting deliveries whose ``expires_at`` passed; their ids."""
    return [row[0] for row in EXPIRE.execute(raw(c), b_now=now).fetchall()]


# -- the funnel: counts bumped with each change --------------------------------------------------
ROLLUP_UPSERT = NamedStatement(hot.rollup_upsert(sqlite_dialect.insert), hot.ROLLUP_COLUMNS)


def bump_rollups(c: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Add ``rows`` (tuples of :data:`hot.ROLLUP_COLUMNS`) to the rollups."""
    if rows:
        ROLLUP_UPSERT.executemany(raw(c), [dict(zip(hot.ROLLUP_COLUMNS, row, strict=True)) for row in rows])
