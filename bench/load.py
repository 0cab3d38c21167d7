"""The load generator's side: an aiohttp client for herald and the emulator's receipts.

aiohttp rather than httpx: httpx's pool costs ~10x more CPU per request at this concurrency
(ARCHITECTURE.md), and the load generator shares the two cores with herald.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

TEMPLATE = "bench-welcome"
TEMPLATE_BODY = {
    "category": "transactional",
    "channels": {
        "email": {
            "subject": "Welcome, {{ user.data.name }}",
            "text": "Hello {{ user.data.name }}, your code is {{ data.code }}.",
            "html": "<p>Hello {{ user.data.name }}, your code is <b>{{ data.code }}</b>.</p>",
        }
    },
}
IN_PROGRESS = ("pending", "scheduled", "queued", "sending", "retrying")


class HttpError(RuntimeError):
    pass


def user_id(i: int) -> str:
    return f"bu{i:06d}"


class Payloads:
    """One single-recipient email notification per call.

    ``template``: a stored template and stored users (the common production shape: herald
    looks up the template and the user, renders per recipient). ``inline``: an inline
    recipient and inline content (no lookups at accept).
    """

    def __init__(self, kind: str, users: int) -> None:
        if kind not in ("template", "inline"):
            raise ValueError(f"unknown payload kind {kind!r}")
        self.kind = kind
        self.users = users

    def item(self, i: int, priority: str | None = None) -> dict[str, Any]:
        if self.kind == "template":
            body: dict[str, Any] = {
                "to": user_id(i % self.users),
                "template": TEMPLATE,
                "data": {"code": f"{i:06d}"},
                "channels": ["email"],
            }
        else:
            body = {
                "to": {"id": f"inline{i}", "email": f"inline{i}@example.com"},
                "content": {"subject": f"Message {i}", "text": f"Your code is {i:06d}."},
                "channels": ["email"],
            }
        if priority is not None:
            body["priority"] = priority
        return body


class HeraldClient:
    def __init__(self, base_url: str, key: str, *, connections: int = 256, timeout: float = 300.0) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout: a
            # request sent on a connection the server is closing fails as "Server disconnected".
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=2.0),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(method, path, data=data) as r:
            raw = await r.read()
            return r.status, (orjson.loads(raw) if raw else None)

    async def must(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        status, answer = await self.request(method, path, body)
        if status not in ok:
            raise HttpError(f"{method} {path}: {status} {answer}")
        return answer

    async def setup(self, payloads: Payloads, *, parallel: int = 16) -> None:
        """The template and the user pool the payloads refer to."""
        await self.must("PUT", f"/v1/templates/{TEMPLATE}", TEMPLATE_BODY, ok=(200, 201))
        if payloads.kind != "template":
            return
        sem = asyncio.Semaphore(parallel)

        async def put(i: int) -> None:
            async with sem:
                uid = user_id(i)
                await self.must(
                    "PUT",
                    f"/v1/users/{uid}",
                    {"email": f"{uid}@example.com", "data": {"name": f"User {i}"}},
                    ok=(200, 201),
                )

        await asyncio.gather(*(put(i) for i in range(payloads.users)))

    async def send_batch(self, items: list[dict[str, Any]]) -> list[str]:
        """POST one batch; the ids of the accepted items (every item must be accepted)."""
        answer = await self.must("POST", "/v1/notifications/batch", {"notifications": items}, ok=(202,))
        results = answer["results"]
        bad = [r for r in results if r.get("code") != 202]
        if bad:
            raise HttpError(f"batch items rejected: {bad[:3]}")
        return [r["id"] for r in results]

    async def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self.must("GET", "/v1/stats")
        return answer

    async def in_progress(self) -> int:
        by_status = (await self.stats())["by_status"]
        return sum(int(by_status.get(s, 0)) for s in IN_PROGRESS)

    async def replay_dead_letters(self) -> int:
        total = 0
        while True:
            answer = await self.must("POST", "/v1/dead-letters/replay", {"limit": 1000})
            total += int(answer["replayed"])
            if answer["replayed"] < 1000:
                return total


class Receipts:
    """Polls the emulator for the sends it accepted, incrementally, in the background.

    ``key="notification"``: ``first`` is keyed by notification id and a duplicate is a delivery
    id received more than once (single-recipient notifications). ``key="user"``: keyed by the
    recipient's address, and a duplicate is a user who received the message more than once,
    whatever the delivery id (a broadcast: one notification, one delivery per user)."""

    def __init__(self, emulator_url: str, interval: float = 0.2, *, key: str = "notification") -> None:
        if key not in ("notification", "user"):
            raise ValueError(f"unknown receipt key {key!r}")
        self.url = emulator_url
        self.interval = interval
        self.key = key
        self.first: dict[str, float] = {}  # notification id (or address) -> first accepted send
        self.per_delivery: Counter[str] = Counter()
        self.user_dups = 0
        self.total = 0
        self.last_change = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # One poll at a time: the background poll and a scenario's own poll() asking with the
        # same ``since`` counted the same receipts twice (a false dup) and then skipped as many
        # (a false loss): seen as "lost 119, dup 119" under heavy machine load.
        self._polling = asyncio.Lock()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._task = asyncio.create_task(self._run())

    async def poll(self) -> int:
        async with self._polling:
            return await self._poll()

    async def _poll(self) -> int:
        assert self._session is not None
        async with self._session.get(f"{self.url}/_bench/receipts", params={"since": str(self.total)}) as r:
            answer = orjson.loads(await r.read())
        items = answer["items"]
        if self.key == "user":
            first = self.first
            for _nid, _did, at, address in items:
                if address in first:
                    self.user_dups += 1
                else:
                    first[address] = at
        else:
            for nid, did, at, _address in items:
                self.per_delivery[did] += 1
                if nid not in self.first:
                    self.first[nid] = at
        if items:
            self.total += len(items)
            self.last_change = time.monotonic()
        return len(items)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except (aiohttp.ClientError, TimeoutError):
                continue

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self.poll()
            await self._session.close()
            self._session = None

    def duplicates(self) -> int:
        return self.user_dups + sum(n - 1 for n in self.per_delivery.values() if n > 1)

    async def emulator_stats(self) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.get(f"{self.url}/_bench/stats") as r:
            answer: dict[str, Any] = orjson.loads(await r.read())
            return answer


async def settle(
    client: HeraldClient,
    receipts: Receipts,
    expected: int,
    *,
    deadline: float,
    stall: float,
) -> str:
    """Wait until every expected notification reached the provider and herald has nothing in
    progress; or until nothing arrives for ``stall`` s with nothing in progress to explain it,
    or the ``deadline`` (monotonic). Returns why it stopped: ``done``, ``idle``, ``stalled``,
    ``deadline``."""
    checked = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return "deadline"
        quiet = now - receipts.last_change
        if len(receipts.first) >= expected or (quiet > 1.0 and now - checked > 1.0):
            checked = now
            await receipts.poll()
            busy = await client.in_progress()
            if busy == 0:
                # A send that finished between the poll above and this count has its receipt
                # at the provider already: read it before calling anything lost or idle.
                await receipts.poll()
                if len(receipts.first) >= expected:
                    await asyncio.sleep(0.5)  # late duplicates, if any, arrive now
                    await receipts.poll()
                    return "done"
                # Nothing received yet: routing may not have begun (no delivery exists, none
                # is in progress) on a busy machine; give it time before calling it idle.
                if quiet > (2.0 if receipts.first else 30.0):
                    return "idle"
            if quiet > stall:
                return "stalled"
        await asyncio.sleep(0.1)
