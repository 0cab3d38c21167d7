"""``herald users import FILE``: JSON lines or CSV, devices, preferences and topics included, bad
rows reported by line number, resumable after an interruption."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from herald.adapters.store.sql_admin import SqlAdminMixin
from herald.domain.errors import ServiceUnavailable
from herald.entrypoints.cli import app
from tests.support.process import herald_cli


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def config(tmp_path: Path) -> None:
    (tmp_path / "herald.toml").write_text(
        '[database]\nurl = "sqlite:///herald.db"\n[logging]\nlevel = "warning"\n'
    )


def topic(tmp_path: Path, key: str) -> None:
    """A topic, created as the API would (the import subscribes to existing topics only)."""
    assert herald_cli(tmp_path, "db", "upgrade").returncode == 0
    conn = sqlite3.connect(tmp_path / "herald.db")
    try:
        conn.execute(
            "INSERT INTO topics (key, name, data, created_at, updated_at) VALUES (?, ?, '{}', 0, 0)",
            (key, key),
        )
        conn.commit()
    finally:
        conn.close()


@pytest.mark.slow
def test_json_lines_with_devices_preferences_topics_and_bad_rows(tmp_path: Path) -> None:
    config(tmp_path)
    topic(tmp_path, "news")
    lines = [
        {
            "id": "u1",
            "email": "u1@example.com",
            "data": {"name": "Ana"},
            "devices": [{"kind": "fcm", "token": "tok-1"}],
            "preferences": {"channels": {"sms": False}, "digests": {"marketing": "daily@09:00"}},
            "topics": ["news"],
        },
        {"id": "u2", "email": "not-an-email"},
        "",
        "{not json",
        {"id": "u3", "phone": "+33612345678", "topics": ["nope"]},
        {"id": "u4", "locale": "fr"},
    ]
    path = tmp_path / "users.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")

    done = herald_cli(tmp_path, "users", "import", "users.jsonl")
    assert done.returncode == 1  # bad rows: reported, skipped, and the exit status says so
    assert "Traceback" not in done.stderr
    reported = [line for line in done.stderr.splitlines() if line.startswith("line ")]
    assert reported[0].startswith("line 2: ") and "email" in reported[0]
    assert reported[1].startswith("line 4: not valid JSON")
    assert reported[2].startswith("line 5: topics[0]: ") and "nope" in reported[2]
    assert len(reported) == 3
    assert "imported 2 users" in done.stdout and "3 bad rows" in done.stdout

    db = tmp_path / "herald.db"
    assert rows(db, "SELECT id, email FROM users ORDER BY id") == [("u1", "u1@example.com"), ("u4", None)]
    assert rows(db, "SELECT user_id, kind, token FROM devices") == [("u1", "fcm", "tok-1")]
    assert rows(db, "SELECT user_id, channel, category, enabled FROM user_preferences") == [
        ("u1", "sms", "*", 0)
    ]
    assert rows(db, "SELECT topic, user_id FROM topic_subscribers") == [("news", "u1")]

    again = herald_cli(tmp_path, "users", "import", "users.jsonl")
    assert again.returncode == 0
    assert "already imported (2 users, 3 bad rows)" in again.stderr
    restarted = herald_cli(tmp_path, "users", "import", "users.jsonl", "--restart")
    assert "imported 2 users" in restarted.stdout
    assert rows(db, "SELECT count(*) FROM devices") == [(1,)]  # the same device, not a second one


@pytest.mark.slow
def test_csv_with_a_header_json_cells_and_a_multi_line_cell(tmp_path: Path) -> None:
    config(tmp_path)
    path = tmp_path / "users.csv"
    path.write_text(
        "id,email,data.name,topics,devices,preferences\n"
        'c1,c1@example.com,Cee,,"[{""kind"": ""apns"", ""token"": ""abc""}]",\n'
        "c2,bad,,,,\n"
        'c3,c3@example.com,"two\nlines",,,"{""channels"": {""email"": false}}"\n'
        'c4,c4@example.com,,,"[not json",\n'
    )
    done = herald_cli(tmp_path, "users", "import", "users.csv")
    assert done.returncode == 1
    reported = [line for line in done.stderr.splitlines() if line.startswith("line ")]
    assert reported[0].startswith("line 3: ") and "email" in reported[0]
    assert reported[1].startswith("line 6: devices: not valid JSON")  # the row after a two-line cell
    db = tmp_path / "herald.db"
    assert rows(db, "SELECT id, data FROM users ORDER BY id") == [
        ("c1", '{"name":"Cee"}'),
        ("c3", '{"name":"two\\nlines"}'),
    ]
    assert rows(db, "SELECT user_id, kind, token FROM devices") == [("c1", "apns", "abc")]
    assert rows(db, "SELECT user_id, channel, enabled FROM user_preferences") == [("c3", "email", 0)]

    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("id,colour\nx,blue\n")
    done = herald_cli(tmp_path, "users", "import", "bad.csv")
    assert done.returncode == 1 and "unknown columns ['colour']" in done.stderr


def test_an_interrupted_import_resumes_after_the_last_committed_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config(tmp_path)
    path = tmp_path / "users.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"u{i:03d}", "email": f"u{i}@example.com"}) + "\n" for i in range(55))
    )
    real = SqlAdminMixin.import_users
    writes: list[int] = []

    async def interrupted(self: Any, items: Any, **kw: Any) -> None:
        writes.append(len(items))
        if len(writes) == 3:
            raise ServiceUnavailable("database unavailable: simulated outage")
        await real(self, items, **kw)

    runner = CliRunner()
    monkeypatch.setattr(SqlAdminMixin, "import_users", interrupted)
    first = runner.invoke(app, ["users", "import", str(path), "--batch-size", "10"])
    assert first.exit_code == 1
    assert "simulated outage" in first.output
    db = tmp_path / "herald.db"
    assert rows(db, "SELECT count(*) FROM users") == [(20,)]  # two batches committed, the third not

    monkeypatch.setattr(SqlAdminMixin, "import_users", real)
    second = runner.invoke(app, ["users", "import", str(path), "--batch-size", "10"])
    assert second.exit_code == 0, second.output
    assert "resuming after line 20 (20 users already imported)" in second.output
    assert "imported 55 users" in second.output
    assert rows(db, "SELECT count(*), min(id), max(id) FROM users") == [(55, "u000", "u054")]

    third = runner.invoke(app, ["users", "import", str(path)])
    assert "already imported (55 users, 0 bad rows)" in third.output

    path.write_text(path.read_text() + json.dumps({"id": "u055"}) + "\n")  # a new version of the file
    fourth = runner.invoke(app, ["users", "import", str(path)])
    assert fourth.exit_code == 0 and "imported 56 users" in fourth.output
