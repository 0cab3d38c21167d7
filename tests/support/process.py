"""herald as a user runs it: the real CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.stack import CURRENT


def herald_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herald", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class HeraldProcess:
    """``herald serve`` (or another role: ``api``, ``worker``, ``scheduler``) in ``cwd``, where its
    herald.toml (and the SQLite file) live."""

    def __init__(
        self, cwd: Path, key: str | None = None, *, role: str = "serve", name: str | None = None
    ) -> None:
        self.cwd = cwd
        self.role = role
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = key
        self.log = cwd / f"{name or role}.log"

    def start(self) -> HeraldProcess:
        args = ["--port", str(self.port)] if self.role in ("serve", "api") else []
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "herald", self.role, *args],
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if self.role not in ("serve", "api"):
            time.sleep(1.0)  # no HTTP port: give it a moment and make sure it did not exit
            if self.proc.poll() is not None:
                raise AssertionError(f"herald {self.role} exited: {self.log.read_text()[-2000:]}")
            return self
        deadline = time.monotonic() + 120  # a deadline, not a timing: a loaded machine starts slowly
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"herald exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("herald did not become healthy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def kill(self, sig: int = signal.SIGKILL, wait: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(wait)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def accept_emails(h: HeraldProcess, total: int, *, batch: int = 1000) -> list[str]:
    """Store user ``u1`` and accept ``total`` inline emails to them by batches; their ids."""
    ids: list[str] = []
    with h.client() as c:
        assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
        for start in range(0, total, batch):
            items = [
                {"to": "u1", "content": {"subject": f"n{i}", "text": "body"}, "channels": ["email"]}
                for i in range(start, min(start + batch, total))
            ]
            r = c.post("/v1/notifications/batch", json={"notifications": items})
            assert r.status_code == 202, r.text
            ids += [x["id"] for x in r.json()["results"]]
    return ids


def db_query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Query the test herald's database: the SQLite file ``db``, or on the scale-out stack the
    test's PostgreSQL schema (``?`` placeholders either way)."""
    if CURRENT.pg_schema is not None:
        import psycopg

        from tests.contract.conftest import PG_URL

        with psycopg.connect(PG_URL, autocommit=True) as pg:
            pg.execute(f'SET search_path TO "{CURRENT.pg_schema}"')
            return list(pg.execute(sql.replace("?", "%s"), args).fetchall())
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def write_config(
    cwd: Path,
    smtp_port: int,
    *,
    lease: float = 2.0,
    concurrency: int = 16,
    idle_wait: float = 0.2,
    extra: str = "",
) -> None:
    stack = CURRENT.overrides()
    if "[server]" not in extra:
        # One process, as these tests' counts of sends in flight at a kill assume; `herald
        # serve`'s default (children from the cores) is tested in test_worker_children.py.
        extra += "\n[server]\nworker_processes = 0\n"
    queue = "".join(f'{k} = "{v}"\n' for k, v in stack.get("queue", {}).items())
    cache = "".join(f'{k} = "{v}"\n' for k, v in stack.get("cache", {}).items())
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "{CURRENT.database_url(cwd)}"

[cache]
{cache}
[queue]
lease_seconds = {lease}
idle_wait_seconds = {idle_wait}
{queue}

[providers.console]
path = "{cwd / "console.jsonl"}"

[providers.smtp]
host = "127.0.0.1"
port = {smtp_port}
from_address = "noreply@herald.test"
timeout = 10

[channels.email]
providers = ["smtp"]
concurrency = {concurrency}

[logging]
level = "warning"
{extra}
"""
    )
