"""Run a real herald (uvicorn + the full container) inside the test's event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from herald.bootstrap import Container, build
from herald.config import Settings, _merge_channels
from herald.entrypoints.api.app import create_app
from herald.entrypoints.api.deps import generate_key, hash_key
from herald.ports import Clock, Provider
from tests.support.net import free_port
from tests.support.stack import CURRENT

ALL_ROLES = frozenset({"router", "worker", "scheduler"})


def make_settings(tmp: Path, *, smtp_port: int | None = None, **overrides: Any) -> Settings:
    """Settings for a test herald: SQLite in ``tmp``, console recording in ``tmp``."""
    raw: dict[str, Any] = {
        "database": {"url": CURRENT.database_url(tmp)},
        "providers": {"console": {"path": str(tmp / "console.jsonl")}},
        "queue": {"lease_seconds": 5, "idle_wait_seconds": 0.2},
        "logging": {"level": "warning"},
    }
    for section, values in CURRENT.overrides().items():
        raw[section] = {**raw.get(section, {}), **values}
    if smtp_port is not None:
        raw["providers"]["smtp"] = {
            "host": "127.0.0.1",
            "port": smtp_port,
            "from_address": "noreply@herald.test",
            "timeout": 5,
        }
        raw["channels"] = {"email": {"providers": ["smtp"]}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return _settings(raw)


def _settings(raw: dict[str, Any]) -> Settings:
    return Settings(**_merge_channels(raw))


@dataclass
class Running:
    client: httpx.AsyncClient
    container: Container
    key: str
    base_url: str

    async def new_key(self, *scopes: str) -> str:
        raw, key = generate_key("test", set(scopes), time.time())
        await self.container.store.create_api_key(key, hash_key(raw))
        return raw

    async def wait_final(self, notification_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = await self.client.get(f"/v1/notifications/{notification_id}")
            body = r.json()
            if body.get("status") in ("completed", "failed", "cancelled"):
                return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"notification {notification_id} not final after {timeout}s: {body}")


@asynccontextmanager
async def running_herald(
    settings: Settings,
    *,
    clock: Clock | None = None,
    providers: Mapping[str, Provider] | None = None,
    roles: frozenset[str] = ALL_ROLES,
    configure: Callable[[Container], None] | None = None,
) -> AsyncIterator[Running]:
    async def make() -> Container:
        c = await build(settings, clock=clock, providers=providers)
        if configure is not None:
            configure(c)
        return c

    app = create_app(make, roles=set(roles), max_body_bytes=settings.server.max_body_bytes)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("herald did not start")
        await asyncio.sleep(0.01)
    container: Container = app.state.container
    raw, key = generate_key("test-admin", {"admin"}, time.time())
    await container.store.create_api_key(key, hash_key(raw))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {raw}"}, timeout=30
    ) as client:
        try:
            yield Running(client, container, raw, base)
        finally:
            server.should_exit = True
            await task
