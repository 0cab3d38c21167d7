"""The accept path's shortcuts: group commit, cached lookups, Jinja skipped for plain text."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from herald.adapters.store.database import SerialExecutor
from herald.domain import urgency
from herald.domain.errors import ServiceUnavailable, ValidationError
from herald.domain.models import ApiKey, Notification, NotificationStatus, Priority, Template
from herald.services import rendering
from herald.services.group_commit import NotificationWriter
from herald.services.lookups import Lookups, TtlCache


def note(i: int) -> Notification:
    return Notification(
        id=f"ntf_{i}",
        status=NotificationStatus.ACCEPTED,
        recipients=[],
        template=None,
        template_version=None,
        content=None,
        data={},
        channels=["email"],
        category="c",
        priority=Priority.NORMAL,
    )


def template(version: int) -> Template:
    return Template(name="t", version=version, category=None, channels={"email": {"subject": "s"}})


class FakeStore:
    """Only what the writer and the lookups call; ``bad`` ids make a commit fail."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.bad: set[str] = set()
        self.down = False
        self.gate: asyncio.Event | None = None
        self.reads: list[str] = []
        self.templates: dict[str, Template] = {}
        self.users: set[str] = set()
        self.keys: dict[str, ApiKey] = {}

    async def create_notifications(
        self, notifications: Sequence[Notification], *, idempotency: Any = (), events: Any = ()
    ) -> None:
        if self.gate is not None:
            await self.gate.wait()
        ids = [n.id for n in notifications]
        if self.down:
            raise ServiceUnavailable("database unavailable")
        if self.bad & set(ids):
            raise ValidationError("refused")
        self.commits.append(ids)

    async def get_template(self, name: str, version: int | None = None) -> Template | None:
        self.reads.append(f"template:{name}")
        return self.templates.get(name)

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, Any]:
        self.reads.append("users:" + ",".join(user_ids))
        return {u: object() for u in user_ids if u in self.users}

    async def get_api_key(self, key_hash: str) -> ApiKey | None:
        self.reads.append(f"key:{key_hash}")
        return self.keys.get(key_hash)

    async def touch_api_key(self, key_id: str, now: float) -> None:
        self.reads.append(f"touch:{key_id}")


async def test_concurrent_commits_share_one_transaction() -> None:
    store = FakeStore()
    writer = NotificationWriter(store)  # type: ignore[arg-type]
    store.gate = asyncio.Event()
    first = asyncio.create_task(writer.commit([note(0)]))
    await asyncio.sleep(0)  # the first is being written (held at the gate)
    rest = [asyncio.create_task(writer.commit([note(i)])) for i in range(1, 6)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in [first, *rest])  # nobody is answered before its commit
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert store.commits == [["ntf_0"], ["ntf_1", "ntf_2", "ntf_3", "ntf_4", "ntf_5"]]


async def test_one_bad_submission_fails_alone() -> None:
    store = FakeStore()
    store.bad = {"ntf_2"}
    writer = NotificationWriter(store)  # type: ignore[arg-type]
    store.gate = asyncio.Event()
    first = asyncio.create_task(writer.commit([note(0)]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(writer.commit([note(i)])) for i in range(1, 4)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert results[0] is None and results[1] is None and results[3] is None
    assert isinstance(results[2], ValidationError)
    assert sorted(i for c in store.commits for i in c) == ["ntf_0", "ntf_1", "ntf_3"]


async def test_database_away_answers_everyone_with_the_same_error() -> None:
    store = FakeStore()
    writer = NotificationWriter(store)  # type: ignore[arg-type]
    store.gate = asyncio.Event()
    first = asyncio.create_task(writer.commit([note(0)]))
    await asyncio.sleep(0)
    store.down = True
    rest = [asyncio.create_task(writer.commit([note(i)])) for i in range(1, 3)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    assert store.commits == []


async def test_a_cancelled_caller_not_yet_taken_is_never_written() -> None:
    store = FakeStore()
    writer = NotificationWriter(store)  # type: ignore[arg-type]
    store.gate = asyncio.Event()
    first = asyncio.create_task(writer.commit([note(0)]))
    await asyncio.sleep(0)
    second = asyncio.create_task(writer.commit([note(1)]))
    third = asyncio.create_task(writer.commit([note(2)]))
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    store.gate.set()
    await asyncio.gather(first, third)
    await writer.close()
    assert store.commits == [["ntf_0"], ["ntf_2"]]


async def test_lookups_cache_hits_and_forget() -> None:
    store = FakeStore()
    store.templates["t"] = template(1)
    store.users = {"u1"}
    store.keys["h"] = ApiKey(id="k", name="k", scopes=frozenset({"send"}))
    lookups = Lookups(store)  # type: ignore[arg-type]
    for _ in range(3):
        assert (await lookups.api_key("h")) is not None
        assert (await lookups.template("t")) is not None
        assert await lookups.existing_users(["u1", "u2"]) == {"u1"}
    # hits are cached; misses (unknown key, unknown user) are asked again every time
    assert store.reads.count("key:h") == 1
    await asyncio.sleep(0)  # the key's use is recorded in the background, once a minute at most
    assert store.reads.count("touch:k") == 1
    assert store.reads.count("template:t") == 1
    assert store.reads.count("users:u1,u2") == 1 and store.reads.count("users:u2") == 2
    store.templates["t"] = template(2)
    lookups.forget_template("t")
    latest = await lookups.template("t")
    assert latest is not None and latest.version == 2
    store.users = set()
    lookups.forget_user("u1")
    assert await lookups.existing_users(["u1"]) == set()


def test_ttl_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("herald.services.lookups.time.monotonic", lambda: now[0])
    cache: TtlCache[str, int] = TtlCache(5.0)
    cache.put("a", 1)
    assert cache.get("a") == 1
    now[0] = 106.0
    assert cache.get("a") is None
    off: TtlCache[str, int] = TtlCache(0.0)
    off.put("a", 1)
    assert off.get("a") is None


@pytest.mark.parametrize(
    "source",
    ["hello", "hello\n", "a\r\nb\r\n", "a\rb", "x\n\n", "", "\n", "<b>&amp; 'q'</b>", "a}}b", "{x}"],
)
@pytest.mark.parametrize("html", [False, True])
def test_plain_text_renders_as_jinja_would(source: str, html: bool) -> None:
    jinja = "".join(rendering._compiled(source, html).generate({}))
    assert rendering.render_string(source, {"user": {}}, html=html) == jinja


async def test_concurrent_template_misses_share_one_read() -> None:
    store = FakeStore()
    store.templates["t"] = template(1)
    lookups = Lookups(store)  # type: ignore[arg-type]
    got = await asyncio.gather(*(lookups.template("t") for _ in range(50)))
    assert all(g is not None and g.version == 1 for g in got)
    assert store.reads.count("template:t") == 1


async def test_a_put_during_a_read_does_not_cache_the_old_version() -> None:
    store = FakeStore()
    store.templates["t"] = template(1)
    lookups = Lookups(store)  # type: ignore[arg-type]
    reading = asyncio.create_task(lookups.template("t"))
    await asyncio.sleep(0)  # the read has started (and read version 1)
    store.templates["t"] = template(2)
    lookups.forget_template("t")  # as PUT /v1/templates/t does
    await reading
    latest = await lookups.template("t")
    assert latest is not None and latest.version == 2


def test_the_database_thread_runs_urgent_work_first_and_in_order() -> None:
    executor = SerialExecutor("test-serial")
    gate = threading.Event()
    order: list[str] = []
    running = executor.submit_at(urgency.NORMAL, lambda: gate.wait(5))  # holds the thread
    queued = [
        executor.submit_at(urgency.NORMAL, lambda: order.append("normal-1")),
        executor.submit_at(urgency.URGENT, lambda: order.append("urgent-1")),
        executor.submit_at(urgency.NORMAL, lambda: order.append("normal-2")),
        executor.submit_at(urgency.URGENT, lambda: order.append("urgent-2")),
    ]
    cancelled = executor.submit_at(urgency.NORMAL, lambda: order.append("cancelled"))
    assert cancelled.cancel()  # not started: never runs
    gate.set()
    assert running.result(5) is True
    for future in queued:
        future.result(5)
    executor.shutdown()
    assert order == ["urgent-1", "urgent-2", "normal-1", "normal-2"]
