"""A topic's subscribers written straight into herald's database, after herald created its
schema (as tests/acceptance/test_topic_fanout.py does): a million users through the API would
take longer than the broadcast itself, and the broadcast is what is measured.

SQLite: one transaction of ``executemany``; PostgreSQL: ``COPY``, then ``ANALYZE`` (what
autovacuum would do on its own a minute later, done now so that the plan does not change
mid-run).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

DOMAIN = "@example.com"
PREFIX = "bb"
WIDTH = 7


def broadcast_user(i: int) -> str:
    return f"{PREFIX}{i:0{WIDTH}d}"


def address(i: int) -> str:
    return broadcast_user(i) + DOMAIN


def index_of(addr: str | None, n: int) -> int | None:
    """The subscriber index of a receipt's address, None when it is not one of the ``n``."""
    if not addr or not addr.startswith(PREFIX) or not addr.endswith(DOMAIN):
        return None
    digits = addr[len(PREFIX) : -len(DOMAIN)]
    if len(digits) != WIDTH or not digits.isdigit():
        return None
    i = int(digits)
    return i if i < n else None


def _users(n: int, now: float) -> Iterator[tuple[str, str, str, str, float, float]]:
    for i in range(n):
        uid = broadcast_user(i)
        yield uid, uid + DOMAIN, json.dumps({"name": f"User {i}"}), "{}", now, now


def _subscriptions(topic: str, n: int, now: float) -> Iterator[tuple[str, str, float]]:
    for i in range(n):
        yield topic, broadcast_user(i), now


def generate_sqlite(db: Path, topic: str, n: int) -> None:
    conn = sqlite3.connect(db, timeout=60)
    try:
        now = time.time()
        conn.executemany(
            "INSERT INTO users (id, email, data, chat, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            _users(n, now),
        )
        conn.executemany(
            "INSERT INTO topic_subscribers (topic, user_id, created_at) VALUES (?, ?, ?)",
            _subscriptions(topic, n, now),
        )
        conn.commit()
    finally:
        conn.close()


def generate_postgres(url: str, topic: str, n: int) -> None:
    """``url``: herald's database URL (its search_path option names the run's schema)."""
    import psycopg

    now = time.time()
    with psycopg.connect(url, autocommit=False) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY users (id, email, data, chat, created_at, updated_at) FROM STDIN") as copy:
                for row in _users(n, now):
                    copy.write_row(row)
            with cur.copy("COPY topic_subscribers (topic, user_id, created_at) FROM STDIN") as copy:
                for sub in _subscriptions(topic, n, now):
                    copy.write_row(sub)
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE users")
        conn.execute("ANALYZE topic_subscribers")
