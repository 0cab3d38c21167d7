"""The plans of the hot statements on a backlog, with no statistics (issue 7).

A fresh table, or one analysed while calm, tells the planner that queued deliveries, accepted
notifications and scheduled deliveries are rare. With a backlog of them a plan chosen on that
belief reads the whole backlog on every claim. PostgreSQL makes it worse by caching a *generic*
plan for a statement psycopg prepared (after five runs): one plan, whatever the parameters.
These pin plans that stay cheap however wrong the statistics are, under generic plans too.
Measured before (scale-out drain and flood, ``pg_stat_statements``): claim by ids 10 ms (status
index), router claim 25 ms (every accepted notification sorted), routing lease check 2.7 ms,
scheduler promotion 37 ms a tick.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import psycopg
import pytest
from sqlalchemy import ARRAY, Connection, String, any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

from herald.adapters.store import pg_batch, sql_routing, sql_timers
from herald.adapters.store import schema as t
from herald.adapters.store.sql_digests import _held
from herald.adapters.store.sql_outbox import _CLAIM_IDS
from tests.contract.conftest import NOW, PG_URL, SqlBackend

BACKLOG = 5000
_SCHEDULED_ONLY = re.compile(r"ix_deliveries_(scheduled|due_lane)\b")


async def _seed(backend: SqlBackend) -> None:
    """A backlog of each kind, and as many finished rows, without ANALYZE."""

    def op(c: Connection) -> None:
        n = []
        d = []
        for i in range(BACKLOG):
            for status, prefix in (("accepted", "a"), ("routing", "r"), ("routed", "z")):
                n.append({"id": f"ntf_{prefix}{i:06d}", "status": status, "at": NOW + i})
            for status, prefix in (("queued", "q"), ("scheduled", "s"), ("sent", "t")):
                d.append(
                    {
                        "id": f"dlv_{prefix}{i:06d}",
                        "n": f"ntf_{prefix}{i:06d}",
                        "status": status,
                        "at": NOW + i,
                    }
                )
        c.exec_driver_sql(
            "INSERT INTO notifications (id, status, content, category, priority, recipients_total, "
            "recipients_routed, created_at, lease_owner, lease_until) VALUES "
            "(%(id)s, %(status)s, '{}', 'default', 2, 1, 0, %(at)s, 'r1', %(at)s)"
            if c.dialect.name == "postgresql"
            else "INSERT INTO notifications (id, status, content, category, priority, recipients_total, "
            "recipients_routed, created_at, lease_owner, lease_until) VALUES "
            "(:id, :status, '{}', 'default', 2, 1, 0, :at, 'r1', :at)",
            n,  # type: ignore[arg-type]
        )
        c.exec_driver_sql(
            "INSERT INTO deliveries (id, notification_id, user_id, channel, status, priority, category, "
            "content, retry_count, budget_used, due_at, created_at, updated_at) VALUES "
            + (
                "(%(id)s, %(n)s, 'u', 'email', %(status)s, 2, 'default', '{}', 0, 0, %(at)s, %(at)s, %(at)s)"
                if c.dialect.name == "postgresql"
                else "(:id, :n, 'u', 'email', :status, 2, 'default', '{}', 0, 0, :at, :at, :at)"
            ),
            d,  # type: ignore[arg-type]
        )

    await backend.store.db.run(op)


def _compiled(stmt: ClauseElement, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """PostgreSQL text with $1, $2 … and the values in that order."""
    dialect = postgresql.psycopg.dialect(paramstyle="numeric_dollar")  # type: ignore[attr-defined]
    compiled: Any = stmt.compile(dialect=dialect)
    # SQLAlchemy's own expansion of IN lists, as it does before executing (a private helper).
    state = compiled._process_parameters_for_postcompile(compiled.construct_params(params))
    return state.statement, [state.parameters[name] for name in state.positiontup]


def _pg_plans(schema: str, stmt: ClauseElement, params: dict[str, Any]) -> list[str]:
    """The plans PostgreSQL may run ``stmt`` with, prepared: custom (planned for these values)
    and generic (cached for any)."""
    return [_pg_plan(schema, stmt, params, mode) for mode in ("force_custom_plan", "force_generic_plan")]


def _pg_plan(schema: str, stmt: ClauseElement, params: dict[str, Any], mode: str) -> str:
    sql, values = _compiled(stmt, params)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path = "{schema}"')
        conn.execute(f"SET plan_cache_mode = {mode}")
        conn.execute(f"PREPARE hot AS {sql}")
        cur = psycopg.ClientCursor(conn)  # the values as literals in EXECUTE's argument list
        marks = ", ".join(["%s"] * len(values))
        rows = cur.execute(f"EXPLAIN EXECUTE hot({marks})", values).fetchall()
    return " | ".join(r[0].strip() for r in rows)


def _sqlite_plan(backend: SqlBackend, stmt: ClauseElement, params: dict[str, Any]) -> str:
    assert backend.url is not None
    from sqlalchemy.dialects import sqlite

    compiled: Any = stmt.compile(dialect=sqlite.dialect())
    state = compiled._process_parameters_for_postcompile(compiled.construct_params(params))
    conn = sqlite3.connect(backend.url.removeprefix("sqlite:///"))
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN " + state.statement, [state.parameters[n] for n in state.positiontup]
        )
        return " | ".join(str(r[-1]) for r in rows.fetchall())
    finally:
        conn.close()


def _digest_groups() -> Any:
    d = t.deliveries
    return select(d.c.user_id, d.c.category, d.c.channel).where(*_held(d, NOW))


CLAIM = {
    "b_ids": [f"dlv_q{i:06d}" for i in range(50)],
    "b_due": NOW,
    "b_owner": "w",
    "b_until": NOW,
    "b_now": NOW,
}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_plans_stay_on_the_cheap_index_whatever_the_statistics(backend: SqlBackend) -> None:
    await _seed(backend)
    schema = backend.schema
    assert schema is not None
    n = t.notifications

    custom, generic = _pg_plans(schema, _CLAIM_IDS[True], CLAIM)
    # (a table this small may be read whole for 50 ids: fine; never through the status index)
    assert "ix_deliveries_lease" not in custom, custom
    assert "deliveries_pkey" in generic and "ix_deliveries_lease" not in generic, generic
    # and the test can tell: the claim as it was chose the status index (generic plan)
    was = _CLAIM_IDS[True].where(t.deliveries.c.status.in_(("queued", "retrying")))
    assert any("ix_deliveries_lease" in plan for plan in _pg_plans(schema, was, CLAIM))

    lane = {"b_rank": 2, "b_limit": 200}
    for plan in _pg_plans(schema, sql_routing.UNROUTED_NEW_PG, lane):
        assert "Index Scan using ix_notifications_route" in plan and "Sort" not in plan, plan
    was = (
        select(n.c.id)
        .where(n.c.status == "accepted")
        .order_by(n.c.priority, n.c.created_at)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )
    assert any("Sort" in plan for plan in _pg_plans(schema, was, lane))  # (custom plan)

    held = {"b_ids": [f"ntf_r{i:06d}" for i in range(200)], "b_owner": "r1"}
    custom, generic = _pg_plans(schema, pg_batch.ROUTING_HELD, held)
    assert "ix_notifications_route" not in custom, custom
    assert "notifications_pkey" in generic and "ix_notifications_route" not in generic, generic
    was = select(n.c.id).where(
        n.c.id == any_(bindparam("b_ids", type_=ARRAY(String))),
        n.c.status == "routing",
        n.c.lease_owner == bindparam("b_owner"),
    )
    assert any("ix_notifications_route" in plan for plan in _pg_plans(schema, was, held))

    for plan in _pg_plans(schema, sql_timers.PROMOTE_SCHEDULED, {"b_now": NOW}):
        assert "ix_deliveries_scheduled" in plan, plan
    for plan in _pg_plans(schema, _digest_groups(), {}):
        assert _SCHEDULED_ONLY.search(plan), plan  # either partial index of scheduled rows
    lane = {"b_rank": 2, "b_now": NOW + BACKLOG, "b_limit": 2000}
    for plan in _pg_plans(schema, sql_timers.PICK_DUE_LANE[True], lane):
        assert "ix_deliveries_due_lane" in plan and "Sort" not in plan, plan
    for mode in ("force_custom_plan", "force_generic_plan"):
        _assert_lookups_use_an_index(
            _pg_plan(schema, *_by_provider_id(), mode), _pg_plan(schema, *_by_notification(), mode)
        )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_plans_read_the_partial_and_unique_indexes(backend: SqlBackend) -> None:
    await _seed(backend)
    plan = _sqlite_plan(backend, sql_timers.PROMOTE_SCHEDULED, {"b_now": NOW})
    assert "ix_deliveries_scheduled" in plan, plan
    plan = _sqlite_plan(backend, _digest_groups(), {})
    assert _SCHEDULED_ONLY.search(plan), plan
    lane = {"b_rank": 2, "b_now": NOW + BACKLOG, "b_limit": 2000}
    plan = _sqlite_plan(backend, sql_timers.PICK_DUE_LANE[False], lane)
    assert "ix_deliveries_due_lane" in plan and "TEMP B-TREE" not in plan, plan
    _assert_lookups_use_an_index(
        _sqlite_plan(backend, *_by_provider_id()), _sqlite_plan(backend, *_by_notification())
    )
    plan = _sqlite_plan(backend, sql_routing.UNROUTED_NEW, {"b_rank": 2, "b_limit": 200})
    assert "ix_notifications_route" in plan and "TEMP B-TREE" not in plan, plan


def _by_provider_id() -> tuple[Any, dict[str, Any]]:
    d = t.deliveries
    return select(d.c.id).where(d.c.provider_message_id == bindparam("b_pm")).limit(1), {"b_pm": "pm-1"}


def _by_notification() -> tuple[Any, dict[str, Any]]:
    d = t.deliveries
    return select(d.c.id).where(d.c.notification_id == bindparam("b_n")), {"b_n": "ntf_q000001"}


def _assert_lookups_use_an_index(by_provider_id: str, by_notification: str) -> None:
    """Provider callbacks find a delivery by the provider's id (a partial index: only the rows
    that have one); everything by notification goes through uq_deliveries_recipient."""
    assert "ix_deliveries_provider_msg" in by_provider_id, by_provider_id
    assert "uq_deliveries_recipient" in by_notification or "autoindex_deliveries_2" in by_notification, (
        by_notification
    )
