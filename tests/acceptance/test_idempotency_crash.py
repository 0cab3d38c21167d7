"""Issue 17 part 9: kill -9 herald in the middle of accepts; retries with the same keys.

Several rounds: clients send keyed requests (singles, batches and events) as fast as they can,
herald is killed with SIGKILL while they do, restarted, and every request of the round is sent
again with its key and body. Each retry must be accepted, or get the original response, within
seconds (never a 409 that lasts: the claim of a dead process is no claim); nothing is lost
(every 202 seen before the kill is still there, with the same id) and nothing is doubled (one
notification per key, however many times it was sent).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import HeraldProcess, db_query, herald_cli, write_config
from tests.support.smtp import SmtpTestServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stack")]

ROUNDS = 3
CLIENTS = 6
RETRY_WITHIN_S = 10.0  # the guarantee is "a few seconds"; generous for a loaded machine


def _request(kind: str, key: str) -> tuple[str, dict[str, Any]]:
    email = {"subject": key, "text": "x"}
    if kind == "batch":
        items = [{"to": "u1", "content": email, "channels": ["email"]} for _ in range(3)]
        return "/v1/notifications/batch", {"notifications": items}
    if kind == "event":
        return "/v1/events", {"type": "signed_up", "to": "u1", "data": {"key": key}}
    return "/v1/notifications", {"to": "u1", "content": email, "channels": ["email"]}


def _ids(kind: str, body: dict[str, Any]) -> list[str]:
    if kind == "batch":
        return sorted(str(r["id"]) for r in body["results"])
    if kind == "event":
        return [str(body["notification"]["id"])]
    return [str(body["id"])]


def _client_loop(h: HeraldProcess, prefix: str, stop: threading.Event, seen: dict[str, Any]) -> None:
    """Send keyed requests until ``stop`` or until herald dies; note each key tried and each 202."""
    kinds = ("single", "single", "batch", "event")
    with httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {h.key}"}, timeout=10) as c:
        n = 0
        while not stop.is_set():
            kind = kinds[n % len(kinds)]
            key = f"{prefix}-{n}"
            path, body = _request(kind, key)
            seen[key] = (kind, None)
            n += 1
            try:
                r = c.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                return  # herald was killed mid-request: this key's fate is unknown
            assert r.status_code == 202, r.text
            seen[key] = (kind, _ids(kind, r.json()))


def _accepted(seen: dict[str, Any]) -> int:
    return sum(1 for _, ids in list(seen.values()) if ids is not None)


def _retry(c: httpx.Client, kind: str, key: str) -> list[str]:
    path, body = _request(kind, key)
    deadline = time.monotonic() + RETRY_WITHIN_S
    while True:
        r = c.post(path, json=body, headers={"Idempotency-Key": key})
        if r.status_code == 202:
            return _ids(kind, r.json())
        assert r.status_code == 409 and time.monotonic() < deadline, (key, r.status_code, r.text)
        time.sleep(0.2)


@pytest.mark.timeout(900)  # six herald starts: slow on a loaded machine
def test_kill_9_mid_accepts_then_every_retry_is_answered_within_seconds(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    write_config(tmp_path, smtp_server.port)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    db = tmp_path / "herald.db"
    rng = random.Random(17)
    tried: dict[str, Any] = {}
    retried_after_kill = 0
    for rnd in range(ROUNDS):
        h = HeraldProcess(tmp_path, key, name=f"serve-{rnd}").start()
        try:
            with h.client() as c:
                assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
                rule = {"template": "t", "channels": ["email"]}
                template = {"channels": {"email": {"subject": "s", "text": "x"}}}
                assert c.put("/v1/templates/t", json=template).status_code == 200
                assert c.put("/v1/rules/signed_up", json=rule).status_code == 200
            stop = threading.Event()
            seen: dict[str, Any] = {}
            with ThreadPoolExecutor(CLIENTS) as pool:
                futures = [pool.submit(_client_loop, h, f"r{rnd}c{i}", stop, seen) for i in range(CLIENTS)]
                deadline = time.monotonic() + 60  # accepts are under way, however loaded the machine
                while time.monotonic() < deadline and _accepted(seen) < 3:
                    time.sleep(0.05)
                time.sleep(0.2 + rng.random())  # then a kill at some point among them
                h.kill()
                stop.set()
                for f in futures:
                    f.result()
        finally:
            h.stop()
        assert _accepted(seen) >= 3, "too few requests were accepted before the kill"
        tried.update(seen)

        # Restart; every request of this round again, with its key and body.
        h = HeraldProcess(tmp_path, key, name=f"serve-{rnd}-after").start()
        try:
            with h.client() as c:
                for k, (kind, before) in sorted(seen.items()):
                    after = _retry(c, kind, k)
                    if before is not None:
                        assert after == before, (k, before, after)  # the original response
                    else:
                        retried_after_kill += 1
                    tried[k] = (kind, after)
        finally:
            h.stop()

    # One notification per accepted item of each key, however often it was sent: nothing doubled,
    # nothing lost.
    expected = {nid for _, ids in tried.values() for nid in ids}
    stored = {row[0] for row in db_query(db, "SELECT id FROM notifications")}
    assert stored == expected, (len(stored), len(expected))
    (keys,) = db_query(db, "SELECT count(*) FROM idempotency_keys")[0]
    assert keys == len(tried)
    assert db_query(db, "SELECT count(*) FROM idempotency_keys WHERE state <> 'done'")[0][0] == 0
    print(
        f"\nidempotency crash: keys={len(tried)} notifications={len(stored)} "
        f"unknown_at_kill={retried_after_kill}"
    )
