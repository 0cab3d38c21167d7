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
    """``herald serve`` in ``cwd`` (its herald.toml and SQLite file live there)."""

    def __init__(self, cwd: Path, key: str | None = None) -> None:
        self.cwd = cwd
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = key
        self.log = cwd / "serve.log"

    def start(self) -> HeraldProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "herald", "serve", "--port", str(self.port)],
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
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


def db_query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def write_config(
    cwd: Path, smtp_port: int, *, lease: float = 2.0, concurrency: int = 16, extra: str = ""
) -> None:
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "sqlite:///{cwd / "herald.db"}"

[queue]
lease_seconds = {lease}
idle_wait_seconds = 0.2

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
