"""Issue 4: a topic of 100,000 subscribers fans out completely, each user exactly once, in bounded
memory; kill -9 in the middle of the fan-out and restart: still each exactly once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.process import HeraldProcess, db_query, herald_cli

pytestmark = pytest.mark.slow

SUBSCRIBERS = 100_000


def _config(cwd: Path) -> None:
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "sqlite:///{cwd / "herald.db"}"

[queue]
lease_seconds = 2
idle_wait_seconds = 0.2

[providers.console]
path = "{cwd / "console.jsonl"}"

[channels.email]
providers = ["console"]
concurrency = 8

[logging]
level = "warning"
"""
    )


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _generate_subscribers(db: Path, n: int) -> None:
    """Users and subscriptions written straight into the database (fast test set-up)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        now = time.time()
        users = ((f"user-{i:06d}", f"user-{i:06d}@example.com", "{}", "{}", now, now) for i in range(n))
        conn.executemany(
            "INSERT INTO users (id, email, data, chat, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            users,
        )
        subs = (("news", f"user-{i:06d}", now) for i in range(n))
        conn.executemany("INSERT INTO topic_subscribers (topic, user_id, created_at) VALUES (?, ?, ?)", subs)
        conn.commit()
    finally:
        conn.close()


def _routing(db: Path, nid: str) -> tuple[str, int, int, str | None]:
    rows = db_query(
        db,
        "SELECT status, recipients_total, recipients_routed, route_cursor FROM notifications WHERE id = ?",
        nid,
    )
    status, total, routed, cursor = rows[0]
    return str(status), int(total), int(routed), cursor


def test_topic_of_100k_fans_out_once_each_in_bounded_memory_across_kill_9(tmp_path: Path) -> None:
    _config(tmp_path)
    db = tmp_path / "herald.db"
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    assert key.startswith("hk_")
    h = HeraldProcess(tmp_path, key).start()
    try:
        with h.client() as c:
            assert c.put("/v1/topics/news", json={"name": "News"}).status_code == 200
        _generate_subscribers(db, SUBSCRIBERS)
        with h.client() as c:
            topic = c.get("/v1/topics/news").json()
            assert topic["subscribers"] == SUBSCRIBERS
            assert h.proc is not None
            baseline = _rss_kib(h.proc.pid, "VmRSS")
            r = c.post(
                "/v1/notifications",
                json={
                    "to": {"topic": "news"},
                    "content": {"subject": "Hello {{ user.id }}", "text": "news"},
                    "channels": ["email"],
                    "category": "system",
                },
            )
            assert r.status_code == 202, r.text
            nid = r.json()["id"]
        # Kill -9 in the middle of the fan-out.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, total, routed, cursor = _routing(db, nid)
            if routed >= 30_000:
                break
            time.sleep(0.05)
        assert routed >= 30_000 and status == "routing", (status, routed)
        assert total == SUBSCRIBERS and cursor is not None
        peak_before_kill = _rss_kib(h.proc.pid, "VmHWM")
        h.kill()
        (at_kill,) = db_query(db, "SELECT count(*) FROM deliveries WHERE notification_id = ?", nid)[0]
        assert 0 < at_kill < SUBSCRIBERS
    finally:
        h.stop()

    h = HeraldProcess(tmp_path, key).start()
    try:
        assert h.proc is not None
        restart_baseline = _rss_kib(h.proc.pid, "VmRSS")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status, total, routed, _ = _routing(db, nid)
            if status == "routed":
                break
            time.sleep(0.2)
        assert status == "routed", (status, routed)
        peak_after = _rss_kib(h.proc.pid, "VmHWM")
        with h.client() as c:
            body = c.get(f"/v1/notifications/{nid}").json()
        assert body["recipients_total"] == SUBSCRIBERS and body["recipients_routed"] == SUBSCRIBERS
    finally:
        h.stop()

    (count, distinct) = db_query(
        db, "SELECT count(*), count(DISTINCT user_id) FROM deliveries WHERE notification_id = ?", nid
    )[0]
    missing = db_query(
        db,
        "SELECT count(*) FROM topic_subscribers s WHERE s.topic = 'news' AND NOT EXISTS "
        "(SELECT 1 FROM deliveries d WHERE d.notification_id = ? AND d.user_id = s.user_id)",
        nid,
    )[0][0]
    growth_mb = max(peak_before_kill - baseline, peak_after - restart_baseline) / 1024
    print(
        f"\nfan-out {SUBSCRIBERS}: deliveries={count} distinct={distinct} missing={missing} "
        f"at_kill={at_kill} rss_growth_mb={growth_mb:.1f}"
    )
    assert count == SUBSCRIBERS and distinct == SUBSCRIBERS and missing == 0
    assert growth_mb < 200
