"""Console pages with a million deliveries: how long each page takes to answer.

Fills a SQLite database (or a PostgreSQL schema) with ``--deliveries`` deliveries spread over the
last week (bulk inserts: two deliveries per notification, an attempt each, a few per cent
failed, dead, retrying), starts herald on it (API only: no worker drains the queue while we
measure) and times, through HTTP with a signed-in session: the overview (hour, day, week; the
first week view cold, then warm refreshes), searches (by user, common and rare template,
failed, a time range), a notification's detail, the dead letters, a user's page.

    python -m bench.console_pages [--deliveries 1000000] [--rounds 7] [--keep DIR]
    python -m bench.console_pages --postgres     # a fresh schema of the test database, dropped after

Figures go to stdout as JSON (median and worst of the warm rounds, in milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from tests.support.herald import make_settings, running_herald

from herald.adapters.store.database import Database
from herald.adapters.store.sql_console import id_bound

CHANNELS = ["email", "sms", "push", "in_app"]
WEEK = 7 * 86_400.0
# (status, share) for finished deliveries; the rest of each notification's story below.
STATUSES = [
    ("sent", 0.86),
    ("delivered", 0.06),
    ("read", 0.03),
    ("failed", 0.01),
    ("dead", 0.003),
    ("skipped", 0.02),
    ("retrying", 0.004),
    ("queued", 0.013),
]
TEMPLATES = [f"tpl_{i:02d}" for i in range(20)] + ["rare_template"]


def _id(prefix: str, ts: float, rng: random.Random) -> str:
    base = id_bound(prefix, ts)  # the time part, then random bits as new_id makes them
    tail = "".join(rng.choice("0123456789abcdefghjkmnpqrstvwxyz") for _ in range(16))
    return base[: len(prefix) + 1 + 10] + tail


def rows(
    total: int, now: float, seed: int = 7
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rng = random.Random(seed)
    cum, acc = [], 0.0
    for status, share in STATUSES:
        acc += share
        cum.append((acc, status))
    notes, dels, atts = [], [], []
    n_notes = total // 2
    start = now - WEEK
    step = WEEK / n_notes
    for i in range(n_notes):
        t = start + i * step
        nid = _id("ntf", t, rng)
        user = f"user{rng.randrange(50_000):05d}"
        template = TEMPLATES[-1] if i % 50_000 == 0 else TEMPLATES[min(19, int(rng.expovariate(0.3)))]
        body = orjson.dumps(
            {"recipients": [{"user_id": user}], "content": None, "data": {"code": str(i)}, "channels": None}
        ).decode()
        notes.append(
            (
                nid,
                "routed",
                user,
                template,
                None,
                body,
                template,
                1,
                "transactional",
                2,
                None,
                None,
                None,
                None,
                None,
                1,
                1,
                None,
                None,
                None,
                None,
                t,
                t + 0.05,
            )
        )
        for k, channel in enumerate(rng.sample(CHANNELS, 2)):
            dt = t + 0.05 + k * 0.001
            did = _id("dlv", dt, rng)
            r = rng.random()
            status = next(s for c, s in cum if r <= c) if r <= acc else "sent"
            sent = dt + 0.2 if status in ("sent", "delivered", "read") else None
            failed = dt + 90 if status in ("failed", "dead") else None
            reason = {"failed": "permanent_error", "dead": "retries_exhausted", "skipped": "opted_out"}.get(
                status
            )
            content = '{"subject": "Hello", "text": "Your code is 1234"}'
            dels.append(
                (
                    did,
                    nid,
                    user,
                    channel,
                    status,
                    reason,
                    2,
                    "transactional",
                    f"{user}@example.com",
                    content,
                    "console",
                    1,
                    1,
                    dt,
                    None,
                    None,
                    None,
                    None,
                    dt,
                    dt,
                    dt + 0.1,
                    sent,
                    sent + 2 if status in ("delivered", "read") and sent else None,
                    sent + 60 if status == "read" and sent else None,
                    failed,
                    failed or sent or dt,
                )
            )
            outcome = (
                "permanent"
                if status == "failed"
                else ("transient" if status in ("dead", "retrying") else "ok")
            )
            code = {"ok": "250", "transient": "451", "permanent": "550"}[outcome]
            atts.append(
                (
                    did,
                    1,
                    dt + 0.1,
                    "console",
                    outcome,
                    code,
                    None if outcome == "ok" else "mailbox unavailable",
                    3.0,
                    False,
                )
            )
    return notes, dels, atts


N_COLS = (
    "id, status, user_id, type, channel, content, template, template_version, category, priority, send_at,"
    " expires_at, dedup_key, api_key_id, topic, recipients_total, recipients_routed, route_cursor, error,"
    " lease_owner, lease_until, created_at, routed_at"
)
D_COLS = (
    "id, notification_id, user_id, channel, status, reason, priority, category, address, content, provider,"
    " retry_count, budget_used, due_at, lease_owner, lease_until, expires_at, provider_message_id,"
    " created_at, queued_at, sending_at, sent_at, delivered_at, read_at, failed_at, updated_at"
)
A_COLS = "delivery_id, n, at, provider, outcome, code, detail, latency_ms, ambiguous"


def fill_sqlite(path: Path, total: int, now: float) -> None:
    Database(f"sqlite:///{path}").upgrade()
    notes, dels, atts = rows(total, now)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    with con:
        con.executemany(f"INSERT INTO notifications ({N_COLS}) VALUES ({','.join('?' * 23)})", notes)
        con.executemany(f"INSERT INTO deliveries ({D_COLS}) VALUES ({','.join('?' * 26)})", dels)
        con.executemany(f"INSERT INTO attempts ({A_COLS}) VALUES ({','.join('?' * 9)})", atts)
        for name in TEMPLATES:
            con.execute(
                "INSERT INTO templates (name, version, category, channels, locales, default_locale, deleted,"
                " created_at) VALUES (?, 1, 'transactional', ?, '{}', 'en', 0, ?)",
                (name, '{"email": {"subject": "Hello", "text": "Your code is {{ data.code }}"}}', now - WEEK),
            )
        con.executemany(
            "INSERT INTO users (id, email, data, chat, created_at, updated_at)"
            " VALUES (?, ?, '{}', '{}', ?, ?)",
            [(f"user{i:05d}", f"user{i:05d}@example.com", now, now) for i in range(50_000)],
        )
    con.execute("ANALYZE")
    con.close()


def fill_postgres(schema: str, total: int, now: float) -> str:
    """Fill a new schema of the test database; returns its URL (search_path set)."""
    import psycopg
    from tests.contract.conftest import PG_URL, pg_url_for

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
    url = pg_url_for(schema)
    db = Database(url)
    db.upgrade()
    db.engine.dispose()
    notes, dels, atts = rows(total, now)
    with psycopg.connect(PG_URL, options=f"-c search_path={schema}") as con:
        with con.cursor() as cur:
            with cur.copy(f"COPY notifications ({N_COLS}) FROM STDIN") as cp:
                for r in notes:
                    cp.write_row(r)
            with cur.copy(f"COPY deliveries ({D_COLS}) FROM STDIN") as cp:
                for r in dels:
                    cp.write_row(r)
            with cur.copy(f"COPY attempts ({A_COLS}) FROM STDIN") as cp:
                for r in atts:
                    cp.write_row(r)
            for name in TEMPLATES:
                cur.execute(
                    "INSERT INTO templates (name, version, category, channels, locales, default_locale,"
                    " deleted, created_at) VALUES (%s, 1, 'transactional', %s, '{}', 'en', false, %s)",
                    (
                        name,
                        '{"email": {"subject": "Hello", "text": "Your code is {{ data.code }}"}}',
                        now - WEEK,
                    ),
                )
            with cur.copy("COPY users (id, email, data, chat, created_at, updated_at) FROM STDIN") as cp:
                for i in range(50_000):
                    cp.write_row((f"user{i:05d}", f"user{i:05d}@example.com", "{}", "{}", now, now))
        con.commit()
    with psycopg.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}") as con:
        # What autovacuum does to a table loaded once: statistics, and the visibility map that
        # lets counts be answered from an index alone.
        for table in ("notifications", "deliveries", "attempts", "templates", "users"):
            con.execute(f"VACUUM (ANALYZE) {table}")
    return url


def drop_postgres(schema: str) -> None:
    import psycopg
    from tests.contract.conftest import PG_URL

    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def timed(b: httpx.AsyncClient, path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = await b.get(path)
    ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return ms, len(r.content)


async def measure(settings: Any, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with running_herald(settings, roles=frozenset()) as h:
        console = h.container.console
        assert console is not None
        async with httpx.AsyncClient(base_url=h.base_url, timeout=120) as b:
            r = await b.post("/console/login", data={"key": h.key})
            assert r.status_code in (200, 303)
            # One notification and user to open, found the way an operator would.
            search = (await b.get("/console/notifications?status=sent")).text
            nid = search.split('href="/console/notifications/', 2)[1].split('"', 1)[0]
            user = search.split('href="/console/users/', 2)[1].split('"', 1)[0]
            before = console.rollup.recounted
            cold_ms, _ = await timed(b, "/console?window=week")
            out["overview_week_cold_ms"] = round(cold_ms, 1)
            out["overview_week_cold_buckets_in_request"] = console.rollup.recounted - before
            t0 = time.perf_counter()
            if console.rollup.background is not None:
                await console.rollup.background  # the rest of the week, counted in the background
            out["overview_week_background_s"] = round(time.perf_counter() - t0, 2)
            pages = {
                "overview_hour": "/console?window=hour",
                "overview_day": "/console?window=day",
                "overview_week": "/console?window=week",
                "overview_week_partial": "/console?window=week&partial=1",
                "search_user": f"/console/notifications?user={user}",
                "search_template_common": "/console/notifications?template=tpl_00",
                "search_template_rare": "/console/notifications?template=rare_template",
                "search_failed": "/console/notifications?status=failed",
                "search_dead_email": "/console/notifications?status=dead&channel=email",
                "search_sent_sms": "/console/notifications?status=sent&channel=sms",
                "search_time_range": "/console/notifications?since="
                + time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3 * 86_400))
                + "&until="
                + time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 2 * 86_400)),
                "notification_detail": f"/console/notifications/{nid}",
                "dead_letters": "/console/dead-letters",
                "dead_letters_sms": "/console/dead-letters?channel=sms",
                "user_page": f"/console/users/{user}",
                "templates": "/console/templates",
            }
            samples: dict[str, list[float]] = {k: [] for k in pages}
            before = console.rollup.recounted
            for _ in range(rounds):
                for name, path in pages.items():
                    ms, _size = await timed(b, path)
                    samples[name].append(ms)
            out["warm_buckets_recounted_per_week_refresh"] = round(
                (console.rollup.recounted - before) / (2 * rounds), 2
            )
            for name, values in samples.items():
                out[name] = {
                    "median_ms": round(statistics.median(values), 1),
                    "max_ms": round(max(values), 1),
                }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--keep", type=Path, help="a folder to keep (and reuse) the filled SQLite database in"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="fill a fresh schema of the test PostgreSQL instead (dropped after)",
    )
    args = parser.parse_args()
    if args.deliveries < 2 or args.rounds < 1:
        parser.error("--deliveries must be at least 2 and --rounds at least 1")
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        schema = None
        if args.postgres:
            schema = f"herald_bench_{uuid.uuid4().hex[:12]}"
            url = fill_postgres(schema, args.deliveries, now)
            settings = make_settings(folder, database={"url": url})
        else:
            db = folder / "herald.db"
            if not db.exists():
                fill_sqlite(db, args.deliveries, now)
            settings = make_settings(folder, database={"url": f"sqlite:///{db}"})
        filled = time.perf_counter() - t0
        try:
            result = asyncio.run(measure(settings, args.rounds))
        finally:
            if schema is not None:
                drop_postgres(schema)
        result = {
            "backend": "postgresql" if args.postgres else "sqlite",
            "deliveries": args.deliveries,
            "fill_s": round(filled, 1),
            **result,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
