"""Issue 19 benchmarks: live inbox latency in a real browser, and many open streams.

``latency``: accept (the ``202``) -> the item visible in ``<herald-inbox>`` in Chromium, over
``--count`` notifications sent one after another, on ``herald serve`` (SQLite, ``embedded``) or
``herald api`` + ``herald worker`` on PostgreSQL (``scaleout``). The page records
``Date.now()`` when the widget renders each item (its ``herald:notification`` event, fired
right after the item is in the DOM); the harness records the wall clock at the ``202``.

``streams``: ``--streams`` users each hold one SSE stream (aiohttp) on one ``herald serve``;
herald's RSS before and after gives the memory per stream; then one batch sends an item to
every one of them and the harness records, per stream, the time from the ``202`` to the item.

    python -m bench.inbox_live latency --stack embedded --count 100
    python -m bench.inbox_live latency --stack scaleout --count 100
    python -m bench.inbox_live streams --streams 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
PG_URL = os.environ.get("HERALD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_pct(values, 50), 1),
        "p99_ms": round(_pct(values, 99), 1),
        "max_ms": round(max(values), 1),
        "mean_ms": round(statistics.fmean(values), 1),
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Herald:
    """herald subprocesses in a temporary folder (the CLI, as users run it)."""

    def __init__(self, stack: str, origin: str | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="herald-bench-inbox-"))
        self.stack = stack
        self.schema: str | None = None
        db = f"sqlite:///{self.dir / 'herald.db'}"
        if stack == "scaleout":
            import psycopg

            self.schema = f"herald_bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG_URL, autocommit=True) as pg:
                pg.execute(f'CREATE SCHEMA "{self.schema}"')
            sep = "&" if "?" in PG_URL else "?"
            db = f"{PG_URL}{sep}options=-csearch_path%3D{self.schema}"
        # No [server] section without an origin: the same file works with code from before issue 19.
        server = f'[server]\ncors_origins = ["{origin}"]\n' if origin else ""
        (self.dir / "herald.toml").write_text(
            f'[database]\nurl = "{db}"\n{server}'
            f'[providers.console]\npath = "{self.dir / "console.jsonl"}"\n[logging]\nlevel = "warning"\n'
        )
        out = self._cli("keys", "create", "--scope", "admin")
        self.key = out.strip()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = 0

    def _cli(self, *args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "herald", *args], cwd=self.dir, capture_output=True, text=True, check=True
        )
        return r.stdout

    def start(self) -> Herald:
        from bench.procs import free_port

        self.port = free_port()
        roles = [["serve"]] if self.stack == "embedded" else [["api"], ["worker"]]
        for role in roles:
            args = [sys.executable, "-m", "herald", *role]
            if role[0] in ("serve", "api"):
                args += ["--port", str(self.port)]
            log = (self.dir / f"{role[0]}.log").open("ab")
            self.procs.append(subprocess.Popen(args, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    time.sleep(2.0 if self.stack == "scaleout" else 0.2)  # the worker's start
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit("herald did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.schema:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as pg:
                pg.execute(f'DROP SCHEMA "{self.schema}" CASCADE')


# Latency in the browser --------------------------------------------------------------------------
def latency(stack: str, count: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO))
    from tests.browser.conftest import CHROMIUM_ARGS
    from tests.browser.support import AppSite

    site = AppSite()
    h = Herald(stack, site.origin).start()
    try:
        with h.client() as c:
            c.put("/v1/users/ana", json={})
            token = c.post("/v1/users/ana/token").json()["token"]
            # Warm up (the worker's first routing pass, connections, the page's first render).
            c.post(
                "/v1/notifications",
                json={"to": "ana", "content": {"title": "warm-up"}, "channels": ["in_app"]},
            )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(site.embed("/app", h.url, "ana", token))
            page.evaluate(
                "() => { window.seenAt = {}; document.addEventListener('herald:notification',"
                " (e) => { window.seenAt[e.detail.title] = Date.now(); }); }"
            )
            page.wait_for_function("() => document.querySelector('herald-inbox').client?.connected === true")
            accepted: dict[str, float] = {}
            ids: dict[str, str] = {}
            with h.client() as c:
                for i in range(count):
                    title = f"n{i}"
                    r = c.post(
                        "/v1/notifications",
                        json={"to": "ana", "content": {"title": title, "body": "b"}, "channels": ["in_app"]},
                    )
                    accepted[title] = time.time() * 1000
                    assert r.status_code == 202, r.text
                    ids[title] = r.json()["id"]
                    page.wait_for_function(
                        f"() => window.seenAt[{json.dumps(title)}] !== undefined", timeout=60_000
                    )
            seen = page.evaluate("window.seenAt")
            browser.close()
        values = [seen[t] - accepted[t] for t in accepted]
        # Where the time goes: accept -> sent (routing, then the in-app send, by the worker in
        # scale-out) and sent -> visible (the feed, the wake-up, the stream, the browser).
        sent: dict[str, float] = {}
        with h.client() as c:
            for title, nid in ids.items():
                (d,) = c.get(f"/v1/notifications/{nid}").json()["deliveries"]
                sent[title] = datetime.fromisoformat(d["sent_at"].replace("Z", "+00:00")).timestamp() * 1000
        return {
            "bench": "inbox_live.latency",
            "stack": stack,
            **_summary(values),
            "accept_to_sent": _summary([sent[t] - accepted[t] for t in accepted]),
            "sent_to_visible": _summary([seen[t] - sent[t] for t in accepted]),
        }
    finally:
        h.stop()
        site.close()


# Many streams ---------------------------------------------------------------------------------------
async def _hold(
    session: aiohttp.ClientSession,
    url: str,
    user: str,
    token: str,
    ready: asyncio.Event,
    got: dict[str, float],
) -> None:
    async with session.get(
        f"{url}/v1/users/{user}/inbox/stream",
        params={"token": token},
        timeout=aiohttp.ClientTimeout(total=None),
    ) as r:
        assert r.status == 200, r.status
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("event: unread"):
                ready.set()
            elif line.startswith("event: item"):
                got[user] = time.time() * 1000
                return


async def _streams(n: int) -> dict[str, Any]:
    h = Herald("embedded", "http://127.0.0.1").start()
    try:
        users = [f"u{i}" for i in range(n)]
        tokens: dict[str, str] = {}
        async with httpx.AsyncClient(
            base_url=h.url, headers={"Authorization": f"Bearer {h.key}"}, timeout=60
        ) as c:

            async def make(u: str) -> None:
                assert (await c.put(f"/v1/users/{u}", json={})).status_code == 200
                tokens[u] = (await c.post(f"/v1/users/{u}/token")).json()["token"]

            for start in range(0, n, 50):
                await asyncio.gather(*(make(u) for u in users[start : start + 50]))
        await asyncio.sleep(1.0)
        rss_before = _rss_kib(h.pid)
        got: dict[str, float] = {}
        readies = [asyncio.Event() for _ in users]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            opened = time.monotonic()
            tasks = [
                asyncio.create_task(_hold(session, h.url, u, tokens[u], e, got))
                for u, e in zip(users, readies, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 300)
            open_s = time.monotonic() - opened
            await asyncio.sleep(2.0)
            rss_after = _rss_kib(h.pid)
            items = [
                {"to": u, "content": {"title": "all", "body": "b"}, "channels": ["in_app"]} for u in users
            ]
            async with httpx.AsyncClient(
                base_url=h.url, headers={"Authorization": f"Bearer {h.key}"}, timeout=120
            ) as c:
                t0 = time.time() * 1000
                nids: list[str] = []
                for start in range(0, n, 1000):
                    r = await c.post(
                        "/v1/notifications/batch", json={"notifications": items[start : start + 1000]}
                    )
                    assert r.status_code in (202, 207), r.text
                    nids += [x["id"] for x in r.json()["results"]]
                accepted = time.time() * 1000
                await asyncio.wait_for(asyncio.gather(*tasks), 300)
                # Where the time goes: the in-app sends themselves, then each stream's wake-up.
                sent: dict[str, float] = {}
                for nid in nids:
                    (d,) = (await c.get(f"/v1/notifications/{nid}")).json()["deliveries"]
                    at = datetime.fromisoformat(d["sent_at"].replace("Z", "+00:00"))
                    sent[d["user_id"]] = at.timestamp() * 1000
        values = [got[u] - accepted for u in users]
        return {
            "bench": "inbox_live.streams",
            "streams": n,
            "open_all_s": round(open_s, 2),
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_after_mib": round(rss_after / 1024, 1),
            "kib_per_stream": round((rss_after - rss_before) / n, 1),
            "accept_batch_ms": round(accepted - t0, 1),
            "to_all_ms": round(max(got.values()) - accepted, 1),
            **{k: v for k, v in _summary(values).items() if k != "n"},
            "last_sent_ms": round(max(sent.values()) - accepted, 1),
            "sent_to_stream": _summary([got[u] - sent[u] for u in users]),
        }
    finally:
        h.stop()


async def _sends(n: int) -> dict[str, Any]:
    """In-app sends alone (no stream open): accept -> the last one ``sent``. Run against another
    checkout's code with ``PYTHONPATH=<its src>`` for a before/after pair."""
    h = Herald("embedded", None).start()
    try:
        async with httpx.AsyncClient(
            base_url=h.url, headers={"Authorization": f"Bearer {h.key}"}, timeout=120
        ) as c:
            for start in range(0, n, 50):
                await asyncio.gather(
                    *(c.put(f"/v1/users/u{i}", json={}) for i in range(start, min(n, start + 50)))
                )
            items = [
                {"to": f"u{i}", "content": {"title": "t", "body": "b"}, "channels": ["in_app"]}
                for i in range(n)
            ]
            t0 = time.time()
            for start in range(0, n, 1000):
                r = await c.post(
                    "/v1/notifications/batch", json={"notifications": items[start : start + 1000]}
                )
                assert r.status_code in (202, 207), r.text
            accepted = time.time()
            db = h.dir / "herald.db"
            import sqlite3

            while True:
                with sqlite3.connect(db, timeout=30) as conn:
                    done = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'sent'").fetchone()[0]
                if done >= n:
                    break
                await asyncio.sleep(0.05)
            last = time.time()
        return {
            "bench": "inbox_live.sends",
            "sends": n,
            "accept_batch_ms": round((accepted - t0) * 1000, 1),
            "accept_to_all_sent_ms": round((last - accepted) * 1000, 1),
            "sends_per_s": round(n / (last - accepted), 1),
        }
    finally:
        h.stop()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.inbox_live")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--stack", choices=["embedded", "scaleout"], default="embedded")
    lat.add_argument("--count", type=int, default=100)
    st = sub.add_parser("streams")
    st.add_argument("--streams", type=int, default=1000)
    se = sub.add_parser("sends")
    se.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()
    if args.cmd == "sends":
        print(json.dumps(asyncio.run(_sends(max(1, args.count)))))
        return
    if args.cmd == "latency":
        if args.count < 1:
            raise SystemExit("--count must be at least 1")
        print(json.dumps(latency(args.stack, args.count)))
    else:
        if args.streams < 1:
            raise SystemExit("--streams must be at least 1")
        print(json.dumps(asyncio.run(_streams(args.streams))))


if __name__ == "__main__":
    main()
