"""CPU per ``POST /v1/notifications``, in process: no network, no router, no worker.

    python -m bench.accept_inproc [--requests 3000] [--concurrency 1]

Builds herald on a fresh SQLite file (the bench's own ``herald.toml``), calls the ASGI app
directly ``--requests`` times (``--concurrency`` at a time) with the ``accept`` scenario's
payload, and prints CPU microseconds per request (both threads: event loop and SQLite). The
machine these figures come from is shared and its speed varies by 2x from one minute to the
next; CPU per request measured this way, with a baseline run right before or after (e.g. an
older ``src`` first on ``PYTHONPATH``), is the comparison that survives that.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.load import TEMPLATE, TEMPLATE_BODY, Payloads, user_id
from bench.server import HeraldTuning, write_config
from herald.bootstrap import build
from herald.config import load_settings
from herald.entrypoints.api import deps
from herald.entrypoints.api.app import create_app
from herald.logs import configure


async def main(requests: int, concurrency: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="herald-accept-inproc-"))
    settings = load_settings(write_config(workdir, 9, "http://127.0.0.1:9", HeraldTuning()))
    configure(settings.logging.level, json=settings.logging.json_logs)
    container = await build(settings)
    app = create_app(lambda: build(settings), roles=set())
    app.state.container = container  # no lifespan: no router, worker or scheduler
    raw, key = deps.generate_key("bench", {"admin"}, time.time())
    await container.store.create_api_key(key, deps.hash_key(raw))

    async def call(method: str, path: str, body: Any) -> int:
        data = orjson.dumps(body)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"authorization", f"Bearer {raw}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 9),
            "state": {},
        }
        messages = [{"type": "http.request", "body": data, "more_body": False}]
        status = 0

        async def receive() -> Any:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # never: the request is whole

        async def send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    payloads = Payloads("template", 200)
    assert await call("PUT", f"/v1/templates/{TEMPLATE}", TEMPLATE_BODY) in (200, 201)
    for i in range(payloads.users):
        body = {"email": f"u{i}@example.com", "data": {"name": f"User {i}"}}
        assert await call("PUT", f"/v1/users/{user_id(i)}", body) in (200, 201)
    for i in range(300):  # warm up: caches, compiled statements
        assert await call("POST", "/v1/notifications", payloads.item(i)) == 202

    async def worker(first: int) -> None:
        for i in range(first, requests, concurrency):
            assert await call("POST", "/v1/notifications", payloads.item(i)) == 202

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"requests={requests} concurrency={concurrency}: {cpu / requests * 1e6:.0f} us CPU per request, "
        f"{wall / requests * 1e6:.0f} us wall, {requests / wall:.0f} requests/s"
    )
    await container.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accept_inproc", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))


if __name__ == "__main__":
    cli()
