"""The funnel over 10,000,000 deliveries: ``GET /v1/stats?by=template&bucket=day`` timed
against a herald whose database holds that many deliveries and their rollups.

    python -m bench.funnel --database sqlite   [--deliveries 10000000] [--keep DIR]
    python -m bench.funnel --database postgres [--deliveries 10000000]

The database is filled with bulk SQL (minutes, not the days a real drain of 10 M would take):
notifications of ``--templates`` templates (one per 100 deliveries), the deliveries with a
spread of channels, providers and final statuses over the last 7 days, then the rollups
computed from those rows by one ``INSERT … SELECT … GROUP BY`` per granularity, with the
counting rules of the live path (``herald.domain.funnel``): sent for sent/delivered/read,
delivered for delivered/read, opened for read, a share of those clicked, failed, bounced,
dead, skipped by reason. Then herald's API (uvicorn, in process, API role only) answers the
requests, timed end to end over HTTP; the answer's totals are checked against a count of the
deliveries. PostgreSQL runs in a fresh schema of the test database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text
from tests.support.herald import make_settings, running_herald

from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore

PER_NOTIFICATION = 100
CATEGORIES = ("marketing", "system", "transactional", "security")
# (share of 1,000, status, reason) by position in the cycle of 1,000.
STATUSES = (
    (30, "skipped", "opted_out"), (10, "skipped", "duplicate"), (15, "failed", None), (5, "dead", None),
    (340, "sent", None), (300, "delivered", None), (300, "read", None),
)  # fmt: skip
# channel by i % 10, and its provider
CHANNELS = ("email",) * 6 + ("push", "push", "in_app", "sms")
PROVIDERS = {"email": "sendgrid", "push": "fcm", "in_app": "in_app", "sms": "twilio"}


def _case(expr: str, pairs: list[tuple[str, str]], default: str) -> str:
    return "CASE " + " ".join(f"WHEN {w} THEN {v}" for w, v in pairs) + f" ELSE {default} END"


def status_case(pos: str) -> tuple[str, str]:
    edges, status_pairs, reason_pairs, acc = [], [], [], 0
    for share, status, reason in STATUSES:
        acc += share
        edges.append(acc)
        status_pairs.append((f"{pos} < {acc}", f"'{status}'"))
        reason_pairs.append((f"{pos} < {acc}", f"'{reason}'" if reason else "NULL"))
    return _case(pos, status_pairs, "'read'"), _case(pos, reason_pairs, "NULL")


def fill_sql(pg: bool, n: int, templates: int, end: float) -> list[str]:
    notes = max(1, n // PER_NOTIFICATION)
    span = 7 * 86_400.0
    if pg:
        seq_n = f"SELECT CAST(g AS bigint) AS i FROM generate_series(0, {notes - 1}) AS g"
        seq_d = f"SELECT CAST(g AS bigint) AS i FROM generate_series(0, {n - 1}) AS g"
        pad = "lpad(CAST({x} AS text), 10, '0')"
        idiv = "({a} / {b})"
    else:
        seq = (
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {last}) SELECT i FROM s"
        )
        seq_n, seq_d = seq.format(last=notes - 1), seq.format(last=n - 1)
        pad = "printf('%010d', {x})"
        idiv = "({a} / {b})"
    created_n = f"({end - span} + (CAST(i AS double precision) * {span / notes}))"
    cat_pairs = [(f"(i % {templates}) % 4 = {k}", f"'{c}'") for k, c in enumerate(CATEGORIES)]
    ncat = _case("", cat_pairs, "'marketing'")
    status, reason = status_case("((i * 7919) % 1000)")
    chan_pairs = [(f"i % 10 = {k}", f"'{c}'") for k, c in enumerate(CHANNELS)]
    channel = _case("", chan_pairs, "'email'")
    prov_pairs = [(f"i % 10 = {k}", f"'{PROVIDERS[c]}'") for k, c in enumerate(CHANNELS)]
    provider = _case("", prov_pairs, "'sendgrid'")
    nid = "'ntf_' || " + pad.format(x=idiv.format(a="i", b=PER_NOTIFICATION))
    note_of = idiv.format(a="i", b=PER_NOTIFICATION)
    created_d = f"({end - span} + (CAST({note_of} AS double precision) * {span / notes}))"
    return [
        "INSERT INTO notifications (id, status, user_id, type, channel, content, template, template_version, "
        "category, priority, recipients_total, recipients_routed, created_at, routed_at) "
        f"SELECT 'ntf_' || {pad.format(x='i')}, 'routed', NULL, 'tpl_' || (i % {templates}), NULL, '{{}}', "
        f"'tpl_' || (i % {templates}), 1, {ncat}, 2, {PER_NOTIFICATION}, {PER_NOTIFICATION}, {created_n}, "
        f"{created_n} FROM ({seq_n}) AS q",
        "INSERT INTO deliveries (id, notification_id, user_id, channel, status, reason, priority, category, "
        "address, content, provider, retry_count, budget_used, due_at, created_at, sent_at, updated_at) "
        f"SELECT 'dlv_' || {pad.format(x='i')}, {nid}, 'u' || (i % 1000000), {channel}, {status}, "
        f"{reason}, 2, 'marketing', NULL, '{{}}', {provider}, 1, 1, "
        f"{created_d}, {created_d}, {created_d}, {created_d} "
        f"FROM ({seq_d}) AS q",
    ]


# metric, condition on the delivery row d (with h = a stable hash of its id's number)
METRICS = (
    ("sent", "d.status IN ('sent', 'delivered', 'read')"),
    ("delivered", "d.status IN ('delivered', 'read')"),
    ("opened", "d.status = 'read'"),
    ("clicked", "d.status = 'read' AND h % 3 = 0"),
    ("clicks", "d.status = 'read' AND h % 3 = 0"),
    ("opened_machine", "d.status IN ('delivered', 'read') AND h % 10 = 1"),
    ("clicked_machine", "d.status IN ('delivered', 'read') AND h % 20 = 1"),
    ("failed", "d.status = 'failed'"),
    ("bounced", "d.status = 'failed' AND h % 2 = 0"),
    ("dead", "d.status = 'dead'"),
    ("skipped:opted_out", "d.status = 'skipped' AND d.reason = 'opted_out'"),
    ("skipped:duplicate", "d.status = 'skipped' AND d.reason = 'duplicate'"),
)


def rollup_sql(pg: bool) -> list[str]:
    """The hourly rollups of every delivery in one scan: a staging table with one row per
    (hour, template, category, channel, provider) and one sum per metric, then unpivoted."""
    number = "CAST(substr(d.id, 5) AS bigint)" if pg else "CAST(substr(d.id, 5) AS INTEGER)"
    bucket = (
        "CAST(floor(d.created_at / 3600) AS bigint) * 3600"
        if pg
        else "CAST(d.created_at / 3600 AS INTEGER) * 3600"
    )
    sums = ", ".join(
        f"sum(CASE WHEN {cond.replace('h %', f'{number} %')} THEN 1 ELSE 0 END) AS m{k}"
        for k, (_, cond) in enumerate(METRICS)
    )
    stage = (
        f"CREATE TEMPORARY TABLE funnel_stage AS SELECT {bucket} AS bucket, n.template AS template, "
        f"n.category AS category, d.channel AS channel, d.provider AS provider, {sums} "
        "FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id "
        "GROUP BY 1, 2, 3, 4, 5"
    )
    unpivot = " UNION ALL ".join(
        f"SELECT 3600, bucket, template, category, channel, provider, '{metric}', m{k} FROM funnel_stage "
        f"WHERE m{k} > 0"
        for k, (metric, _) in enumerate(METRICS)
    )
    insert = (
        "INSERT INTO delivery_rollups (size, bucket, template, category, channel, provider, metric, count) "
        + unpivot
    )
    return [stage, insert, "DROP TABLE funnel_stage"]


# The daily rows are the hourly ones summed by UTC day (as Tally.add keeps both).
DAYS_FROM_HOURS = (
    "INSERT INTO delivery_rollups (size, bucket, template, category, channel, provider, metric, count) "
    "SELECT 86400, (bucket / 86400) * 86400, template, category, channel, provider, metric, sum(count) "
    "FROM delivery_rollups WHERE size = 3600 GROUP BY (bucket / 86400) * 86400, template, category, channel, "
    "provider, metric"
)


async def fill(url: str, n: int, templates: int, pg: bool) -> dict[str, float]:
    db = Database(url)
    store = SqlStore(db)
    await store.start()
    end = (time.time() // 3600) * 3600 + 1800
    spent: dict[str, float] = {}
    try:
        present = await db.run(lambda c: c.execute(text("SELECT max(id) FROM deliveries")).scalar())
        if present is None:
            for name, sql in zip(
                ("notifications", "deliveries"), fill_sql(pg, n, templates, end), strict=True
            ):
                t0 = time.perf_counter()
                await db.run(lambda c, sql=sql: c.execute(text(sql)))
                spent[f"fill_{name}_s"] = round(time.perf_counter() - t0, 1)
                print(f"filled {name} in {spent[f'fill_{name}_s']} s", flush=True)
        else:
            print(f"deliveries present (up to {present}): computing the rollups only", flush=True)
        await db.run(lambda c: c.execute(text("DELETE FROM delivery_rollups")))
        t0 = time.perf_counter()

        def rollups(c: Any) -> None:
            for sql in rollup_sql(pg):
                c.execute(text(sql))
            c.execute(text(DAYS_FROM_HOURS))

        await db.run(rollups)
        spent["rollups_s"] = round(time.perf_counter() - t0, 1)
        print(f"rollups computed in {spent['rollups_s']} s", flush=True)
        if pg:
            await db.run_outside_transaction("VACUUM (ANALYZE) delivery_rollups")
        else:
            await db.run(lambda c: c.execute(text("ANALYZE delivery_rollups")))
    finally:
        await store.close()
    return spent


async def measure(url: str, folder: Path, requests: int) -> dict[str, Any]:

    settings = make_settings(folder, database={"url": url})
    out: dict[str, Any] = {}
    async with running_herald(settings, roles=frozenset()) as h:
        shapes = {
            "by=template&bucket=day": {"by": "template", "bucket": "day"},
            "by=template,channel&bucket=day": {"by": "template,channel", "bucket": "day"},
            "by=category&bucket=hour": {"by": "category", "bucket": "hour"},
            "by=provider (whole week)": {"by": "provider"},
            "template=tpl_3&bucket=day": {"template": "tpl_3", "bucket": "day"},
        }
        for label, params in shapes.items():
            times, cpu = [], []
            body: dict[str, Any] = {}
            for i in range(requests + 3):
                c0, t0 = time.process_time(), time.perf_counter()
                r = await h.client.get("/v1/stats", params=params)
                elapsed = (time.perf_counter() - t0) * 1000
                spent_cpu = (time.process_time() - c0) * 1000
                assert r.status_code == 200, r.text
                body = r.json()
                if i >= 3:  # warm-up
                    times.append(elapsed)
                    cpu.append(spent_cpu)
            times.sort()
            out[label] = {
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[min(len(times) - 1, math.ceil(len(times) * 0.95) - 1)], 1),
                "max_ms": round(times[-1], 1),
                # CPU of this process (server and client) per request: the figure the shared
                # machine's load does not inflate.
                "cpu_p50_ms": round(statistics.median(cpu), 1),
                "rows": len(body["rows"]),
                "total_sent": body["total"]["sent"],
            }
            print(label, out[label], flush=True)
        check = await h.client.get("/v1/stats", params={"by": "template", "bucket": "day"})
        total = check.json()["total"]
        counted = await h.container.store.db.run(
            lambda c: c.execute(
                text("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'delivered', 'read')")
            ).scalar_one()
        )
        out["check"] = {"api_total_sent": total["sent"], "deliveries_sent_or_later": int(counted)}
        assert total["sent"] == counted, out["check"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--deliveries", type=int, default=10_000_000)
    parser.add_argument("--templates", type=int, default=40)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="SQLite: fill (or reuse) the database in this folder")
    args = parser.parse_args()
    if args.deliveries < PER_NOTIFICATION or args.templates < 1 or args.requests < 1:
        parser.error(f"--deliveries must be >= {PER_NOTIFICATION}, --templates and --requests >= 1")
    with tempfile.TemporaryDirectory(prefix="herald-funnel-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        schema = None
        if args.database == "sqlite":
            url = f"sqlite:///{folder / 'herald.db'}"
            reuse = False  # an existing file keeps its deliveries; the rollups are recomputed
        else:
            from tests.contract.conftest import pg_execute, pg_url_for

            schema = f"herald_funnel_{uuid.uuid4().hex[:12]}"
            pg_execute(f'CREATE SCHEMA "{schema}"')
            url = pg_url_for(schema)
            reuse = False
        try:
            spent = (
                {}
                if reuse
                else asyncio.run(fill(url, args.deliveries, args.templates, args.database == "postgres"))
            )
            result = {
                "database": args.database,
                "deliveries": args.deliveries,
                "templates": args.templates,
                **spent,
            }
            result["requests"] = asyncio.run(measure(url, folder, args.requests))
            print(result, flush=True)
        finally:
            if schema is not None:
                from tests.contract.conftest import pg_execute

                pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
