"""The hot statements' shape (issue 7): SQLite's plans, and PostgreSQL's batch insert.

Without ``ANALYZE`` statistics SQLite prefers an index that starts with ``status`` for any
statement that names a status, and walks every queued delivery through it: 135 ms per claim
and 55 ms per expiry sweep with 77,000 queued. These pin the plans that keep both cheap.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from herald.adapters.queue.sql import _SQLITE_TAKE
from herald.adapters.store import sqlite_hot
from herald.adapters.store.database import Database
from herald.domain.addresses import ADDRESS_FIELDS


def _plan(db: Path, sql: str, params: tuple[object, ...] | list[object] | dict[str, object]) -> str:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    finally:
        conn.close()
    return " | ".join(str(r[-1]) for r in rows)


def _migrated(tmp_path: Path) -> Path:
    path = tmp_path / "herald.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    db.engine.dispose()
    return path


def test_claim_by_ids_looks_rows_up_by_primary_key(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    ids = tuple(f"dlv_{i}" for i in range(64))  # a claim's batch: with a few ids SQLite gets it right
    take = _SQLITE_TAKE.format(marks=",".join("?" * len(ids)))
    plan = _plan(db, take, ("w", 1.0, 1.0, 1.0, *ids))
    assert "ix_deliveries_lease" not in plan
    assert "sqlite_autoindex_deliveries_1 (id=?)" in plan, plan


def test_expiry_sweep_reads_the_expiry_index_only(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    sql, slots = sqlite_hot.EXPIRE.text(0)
    params = [1.0 if v is None or kind == sqlite_hot.PositionalStatement._NAMED else v for kind, v in slots]
    plan = _plan(db, sql, params)
    # and the test can tell: the same sweep without the ``|| ''`` walks the status index
    plain = sql.replace("(deliveries.status || ?)", "deliveries.status")
    assert plain != sql
    assert "ix_deliveries_lease" in _plan(db, plain, [p for p in params if p != ""])
    assert "ix_deliveries_lease" not in plan
    assert "ix_deliveries_expiry" in plan, plan


def test_delivery_inserts_name_every_column_the_rows_carry() -> None:
    # PostgreSQL's unnest insert and SQLite's executemany both take the columns by this list:
    # a column added to the rows but not to it would be silently left out on either.
    from herald.adapters.store import pg_batch, schema
    from herald.adapters.store.rows import DELIVERY_COLUMNS, _delivery_rows
    from tests.contract.conftest import make_delivery

    (row,) = _delivery_rows([make_delivery("ntf_1")], 1.0)
    assert tuple(row) == DELIVERY_COLUMNS == pg_batch.INSERT_DELIVERIES_PLAIN.columns
    assert set(DELIVERY_COLUMNS) <= {col.name for col in schema.deliveries.c}


def test_result_batch_reads_its_leases_by_primary_key(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    ids = tuple(f"dlv_{i}" for i in range(200))  # a batch of results
    held = sqlite_hot._held_leases(len(ids))
    plan = _plan(db, held, ids)
    # and the test can tell: without the ``+`` SQLite reads every delivery being sent
    assert "ix_deliveries_lease" in _plan(db, held.replace("+d.status", "d.status"), ids)
    assert "ix_deliveries_lease" not in plan
    assert "sqlite_autoindex_deliveries_1 (id=?)" in plan, plan
    # the funnel's template: the notification by its key, never a scan
    assert "SEARCH n USING INDEX sqlite_autoindex_notifications_1 (id=?)" in plan, plan
    record = _plan(db, sqlite_hot.RECORD_RESULT.sql, dict.fromkeys(sqlite_hot.RECORD_RESULT.names, None))
    assert record == "SEARCH deliveries USING INDEX sqlite_autoindex_deliveries_1 (id=?)", record


def test_recipient_reads_look_users_up_by_key(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    ids = [f"u{i}" for i in range(sqlite_hot.CHUNK)]

    def plan_of(stmt: sqlite_hot.PositionalStatement) -> str:
        sql, slots = stmt.text(len(ids))
        return _plan(db, sql, [ids[v] if kind == stmt._ID else v for kind, v in slots])

    assert "sqlite_autoindex_users_1 (id=?)" in plan_of(sqlite_hot.USERS)
    assert "(user_id=?)" in plan_of(sqlite_hot.PREFERENCES)
    assert "(user_id=?)" in plan_of(sqlite_hot.SETTINGS)
    assert "ix_devices_user (user_id=?)" in plan_of(sqlite_hot.DEVICES)
    assert set(sqlite_hot.SUPPRESSED) == set(ADDRESS_FIELDS)
    for stmt in sqlite_hot.SUPPRESSED.values():
        plan = plan_of(stmt)
        assert "SCAN" not in plan, plan
        assert "sqlite_autoindex_suppressions_1 (channel=? AND address=?)" in plan, plan


def test_routing_write_finds_its_notifications_by_primary_key(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    ids = [f"ntf_{i}" for i in range(50)]
    for stmt in (sqlite_hot.ROUTING_HELD, sqlite_hot.ROUTING_FINISHED):
        sql, slots = stmt.text(len(ids))
        named = {"b_owner": "router-1", "b_now": 1.0}
        params = [ids[v] if kind == stmt._ID else named[v] if kind == stmt._NAMED else v for kind, v in slots]
        plan = _plan(db, sql, params)
        assert plan == "SEARCH notifications USING INDEX sqlite_autoindex_notifications_1 (id=?)", plan
