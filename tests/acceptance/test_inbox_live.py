"""Issue 19 with the real CLI: live inbox streams stop with the process on SIGTERM, and in
scale-out (``herald api`` + ``herald worker`` on PostgreSQL) the API streams what the worker
delivered, and a stream resumes on another API process with nothing missed."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.contract.conftest import pg_execute, pg_url_for, require_postgres
from tests.support.process import HeraldProcess, herald_cli

pytestmark = pytest.mark.slow


class StreamReader:
    """Reads one SSE stream in a thread; events as (event, id, data)."""

    def __init__(self, url: str, params: dict[str, str], headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []
        self.ended = threading.Event()
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, args=(url, params, headers or {}), daemon=True)
        self._thread.start()

    def _run(self, url: str, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url, params=params, headers=headers, timeout=60) as r:
                self.status = r.status_code
                event: dict[str, str] = {}
                for line in r.iter_lines():
                    if line == "":
                        if "event" in event:
                            self.events.append((event["event"], event["id"], orjson.loads(event["data"])))
                        event = {}
                        continue
                    name, _, value = line.partition(":")
                    if name:
                        event[name] = value.strip()
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def wait_item(self, title: str, timeout: float = 30) -> tuple[str, str, dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e[0] == "item" and e[2].get("title") == title:
                    return e
            time.sleep(0.02)
        raise AssertionError(f"no item {title!r} on the stream: {self.events}")

    def wait_open(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.events and self.events[0][0] == "unread", (self.status, self.events)


def _send(h: HeraldProcess, user: str, title: str) -> None:
    with h.client() as c:
        r = c.post(
            "/v1/notifications",
            json={"to": user, "content": {"title": title, "body": "b"}, "channels": ["in_app"]},
        )
        assert r.status_code == 202, r.text


def _user_token(h: HeraldProcess, user: str) -> str:
    with h.client() as c:
        assert c.put(f"/v1/users/{user}", json={}).status_code == 200
        return str(c.post(f"/v1/users/{user}/token").json()["token"])


def test_sigterm_with_open_streams_ends_them_and_exits(tmp_path: Path) -> None:
    (tmp_path / "herald.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "herald.db"}"\n[logging]\nlevel = "warning"\n'
    )
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h = HeraldProcess(tmp_path, key).start()
    try:
        tok = _user_token(h, "u1")
        streams = [StreamReader(f"{h.url}/v1/users/u1/inbox/stream", {"token": tok}) for _ in range(3)]
        for s in streams:
            s.wait_open()
        started = time.monotonic()
        code = h.kill(signal.SIGTERM, wait=20)  # before: still running 25 s later
        took = time.monotonic() - started
        assert code in (0, -signal.SIGTERM), h.log.read_text()[-2000:]  # uvicorn re-raises the signal
        assert "graceful shutdown complete" in h.log.read_text()
        for s in streams:
            assert s.ended.wait(5)
        print(f"exit after SIGTERM with 3 open streams: {took:.2f} s")
    finally:
        h.stop()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    require_postgres()
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


def scaleout_config(cwd: Path, schema: str) -> None:
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "{pg_url_for(schema)}"
pool_size = 4

[queue]
idle_wait_seconds = 0.5

[server]
cors_origins = ["http://127.0.0.1"]

[logging]
level = "warning"
"""
    )


def test_scaleout_api_streams_what_the_worker_delivered_and_resumes_elsewhere(
    tmp_path: Path, pg_schema: str
) -> None:
    scaleout_config(tmp_path, pg_schema)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    assert key.startswith("hk_"), key
    api1 = HeraldProcess(tmp_path, key, role="api", name="api1").start()
    api2 = HeraldProcess(tmp_path, key, role="api", name="api2").start()
    worker = HeraldProcess(tmp_path, key, role="worker").start()
    try:
        tok = _user_token(api1, "u1")
        s1 = StreamReader(f"{api1.url}/v1/users/u1/inbox/stream", {"token": tok})
        s1.wait_open()
        _send(api2, "u1", "live")  # accepted by the other API, sent by the worker
        _, first_id, item = s1.wait_item("live")
        assert item["read"] is False
        # api1 goes away; an item is sent meanwhile; the stream resumes on api2 from its last id.
        api1.kill(signal.SIGTERM, wait=20)
        assert s1.ended.wait(10)
        _send(api2, "u1", "while away")
        s2 = StreamReader(
            f"{api2.url}/v1/users/u1/inbox/stream", {"token": tok}, headers={"Last-Event-ID": first_id}
        )
        _, _, replayed = s2.wait_item("while away")
        assert [e[2]["title"] for e in s2.events if e[0] == "item"] == ["while away"]
        assert replayed["id"] != item["id"]
    finally:
        for p in (api1, api2, worker):
            p.stop()
