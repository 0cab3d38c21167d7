"""``python -m bench.users_import [--users N]``: ``herald users import`` of a generated file.

Writes N user objects as JSON lines (every user with an email, a locale, a time zone and two data
attributes; every tenth with an FCM device and preferences; every fifth subscribed to a topic),
imports them into a fresh SQLite database with the real CLI in a subprocess, and prints one JSON
line: users, seconds, users a second, the importer's peak RSS, the file size, and the rows found
in the database afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson


def write_users(path: Path, count: int) -> None:
    with path.open("wb") as f:
        for i in range(count):
            user: dict[str, object] = {
                "id": f"user-{i:08d}",
                "email": f"person{i}@example.com",
                "locale": "fr" if i % 3 == 0 else "en",
                "timezone": "Europe/Paris",
                "data": {"name": f"Person {i}", "plan": "pro" if i % 7 == 0 else "free"},
            }
            if i % 10 == 0:
                user["devices"] = [{"kind": "fcm", "token": f"fcm-token-{i:08d}"}]
                user["preferences"] = {
                    "channels": {"sms": False},
                    "categories": {"marketing": {"email": False}},
                }
            if i % 5 == 0:
                user["topics"] = ["news"]
            f.write(orjson.dumps(user) + b"\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.users_import")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "herald.toml").write_text('[database]\nurl = "sqlite:///herald.db"\n')
        for leftover in ("herald.db", "herald.db-wal", "herald.db-shm", "herald.db.lock"):
            (work / leftover).unlink(missing_ok=True)
        data = work / "users.jsonl"
        began = time.monotonic()
        write_users(data, args.users)
        print(f"wrote {args.users} users in {time.monotonic() - began:.1f} s", file=sys.stderr)
        herald = [sys.executable, "-m", "herald"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        subprocess.run([*herald, "db", "upgrade"], cwd=work, check=True, env=env, capture_output=True)
        db = sqlite3.connect(work / "herald.db")
        db.execute(
            "INSERT INTO topics (key, name, data, created_at, updated_at) VALUES ('news', 'News', '{}', 0, 0)"
        )
        db.commit()
        db.close()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.monotonic()
        done = subprocess.run(
            [*herald, "users", "import", str(data), "--no-progress"],
            check=False,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"import failed: {done.returncode}")
        db = sqlite3.connect(work / "herald.db")
        counts = {
            t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("users", "devices", "topic_subscribers", "user_preferences")
        }
        db.close()
        print(
            json.dumps(
                {
                    "scenario": "users_import",
                    "users": args.users,
                    "seconds": round(seconds, 1),
                    "users_per_second": round(args.users / seconds),
                    "cpu_seconds": round(
                        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1
                    ),
                    "peak_rss_mb": round(after.ru_maxrss / 1024),
                    "file_mb": round(data.stat().st_size / 1e6),
                    "rows": counts,
                    "summary": done.stdout.strip(),
                }
            )
        )


if __name__ == "__main__":
    main()
