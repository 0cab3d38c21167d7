"""The hot statements' shape (issue 7): SQLite's plans, and PostgreSQL's batch insert.

Without ``ANALYZE`` statistics SQLite prefers an index that starts with ``status`` for any
statement that names a status, and walks every queued delivery through it: 135 ms per claim
and 55 ms per expiry sweep with 77,000 queued. These pin the plans that keep both cheap.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from herald.adapters.queue.sql import _SQLITE_TAKE
from herald.adapters.store.database import Database
from herald.adapters.store.sql import SQLITE_EXPIRY_SWEEP


def _plan(db: Path, sql: str, params: tuple[object, ...] | dict[str, object]) -> str:
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
    sql = str(SQLITE_EXPIRY_SWEEP).replace(":skipped", "?").replace(":now", "?")
    plan = _plan(db, sql, ("skipped", 1.0, 1.0))
    # and the test can tell: the same sweep without the ``+`` walks the status index
    assert "ix_deliveries_lease" in _plan(db, sql.replace("+status", "status"), ("skipped", 1.0, 1.0))
    assert "ix_deliveries_lease" not in plan
    assert "ix_deliveries_expiry" in plan, plan


def test_postgres_delivery_insert_names_every_column_the_rows_carry() -> None:
    from herald.adapters.store.sql import _PG_DELIVERY_COLUMNS, _delivery_rows
    from tests.contract.conftest import make_delivery

    (row,) = _delivery_rows([make_delivery("ntf_1")], 1.0)
    assert tuple(row) == _PG_DELIVERY_COLUMNS
