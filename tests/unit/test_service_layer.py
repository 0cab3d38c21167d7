"""The services the entrypoints call (issue 18), on the in-memory store and a fake clock: dead
letters (replay wakes the senders; one-by-name and all-or-nothing refusals), the directory (one
set of checks for a user whichever way it comes in), the routing catalog (the console saves
templates and rules through the API's checks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from herald.adapters.store.sql import SqlStore
from herald.bootstrap import build_catalog
from herald.config import Settings
from herald.domain.errors import Conflict, NotFound, TemplateError, ValidationError
from herald.domain.models import DeliveryStatus, Template
from herald.ports import DeadLetterFilter
from herald.services.dead_letters import DeadLetterService
from herald.services.directory import Directory
from herald.services.lookups import Lookups
from herald.services.routing_catalog import RoutingCatalog
from herald.services.user_fields import PreferencesBody, UserBody
from herald.testing import FakeClock, memory_queue, memory_store
from tests.contract.conftest import NOW, S, seed, settle


@dataclass
class WakeRecorder:
    """The queue's wake-up, recorded (what reaches other processes rides on it)."""

    woken: list[str | None] = field(default_factory=list)

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        self.woken.append(channel)


@pytest.fixture
async def store() -> AsyncIterator[SqlStore]:
    s = memory_store()
    await s.start()
    yield s
    await s.close()


async def _dead(store: SqlStore, *channels: str) -> list[str]:
    deliveries = await seed(store, *({"channel": ch} for ch in channels))
    await settle(store, memory_queue(store), *((d, S.DEAD) for d in deliveries))
    return [d.id for d in deliveries]


async def test_a_replay_wakes_the_senders_of_each_channel_replayed(store: SqlStore) -> None:
    email, sms = await _dead(store, "email", "sms")
    queue = WakeRecorder()
    service = DeadLetterService(store, queue, FakeClock(NOW + 60))  # type: ignore[arg-type]
    assert {d.id for d in await service.find(DeadLetterFilter())} == {email, sms}

    replayed = await service.replay([email, sms, "dlv_unknown"])
    assert {d.id for d in replayed} == {email, sms}
    assert all(d.status == DeliveryStatus.QUEUED for d in replayed)
    assert sorted(c for c in queue.woken if c is not None) == ["email", "sms"]
    assert await service.find(DeadLetterFilter()) == []


async def test_replay_one_says_why_it_could_not(store: SqlStore) -> None:
    (email,) = await _dead(store, "email")
    service = DeadLetterService(store, WakeRecorder(), FakeClock(NOW + 60))  # type: ignore[arg-type]
    assert (await service.replay_one(email)).status == DeliveryStatus.QUEUED
    with pytest.raises(Conflict, match="is queued, not in the dead-letter queue"):
        await service.replay_one(email)
    with pytest.raises(NotFound):
        await service.replay_one("dlv_nope")


async def test_replay_exactly_is_all_or_nothing_and_replay_all_takes_every_match(store: SqlStore) -> None:
    a, b, c = await _dead(store, "email", "email", "sms")
    queue = WakeRecorder()
    service = DeadLetterService(store, queue, FakeClock(NOW + 60))  # type: ignore[arg-type]
    assert await service.replay_exactly([a, "dlv_nope"]) == (0, ["dlv_nope"])
    assert queue.woken == [] and await service.count(DeadLetterFilter()) == 3

    assert await service.replay_all(DeadLetterFilter(channel="email", limit=1)) == 2  # page by page
    assert [d.id for d in await service.find(DeadLetterFilter())] == [c]
    assert await service.replay_exactly([c, c]) == (1, [])
    assert set(queue.woken) == {"email", "sms"}
    assert b != c


# The directory ----------------------------------------------------------------------------------
def _directory(store: SqlStore) -> Directory:
    catalog = build_catalog(Settings())
    return Directory(store, FakeClock(NOW), catalog.categories)


async def test_a_user_is_checked_the_same_way_by_put_and_by_a_batch(store: SqlStore) -> None:
    directory = _directory(store)
    bad = {"email": "not an address", "webhook_url": "ftp://x"}
    with pytest.raises(ValidationError) as put:
        await directory.put_user("u1", UserBody.model_validate(bad))
    outcome = await directory.import_batch([{"id": "u1", **bad}])
    assert outcome.imported == 0
    err = outcome.results[0].error
    assert err is not None and (err.detail, err.field) == (put.value.detail, put.value.field)

    ok = await directory.put_user("u1", UserBody(email="U1@Example.com"))
    batch = await directory.import_batch([{"id": "u2", "email": "U1@Example.com"}])
    assert batch.imported == 1
    assert (await directory.require_user("u2")).email == ok.email


async def test_preferences_are_checked_before_anything_is_stored(store: SqlStore) -> None:
    directory = _directory(store)
    await directory.put_user("u1", UserBody())
    with pytest.raises(ValidationError) as exc:
        await directory.put_preferences("u1", PreferencesBody(channels={"email": False, "pigeon": True}))
    assert exc.value.field == "channels.pigeon"
    assert await directory.preferences("u1") is None
    with pytest.raises(NotFound):
        await directory.put_preferences("nobody", PreferencesBody())


# The routing catalog ----------------------------------------------------------------------------
def _routing(store: SqlStore, forgotten: list[str]) -> RoutingCatalog:
    catalog = build_catalog(Settings())
    return RoutingCatalog(store, FakeClock(NOW), catalog, Lookups(store), forget_rule=forgotten.append)


async def test_templates_and_rules_go_through_one_set_of_checks(store: SqlStore) -> None:
    forgotten: list[str] = []
    routing = _routing(store, forgotten)
    broken = Template(
        name="t", version=0, category=None, channels={"email": {"subject": "{{ x", "text": "t"}}
    )
    with pytest.raises(TemplateError) as exc:
        await routing.save_template(broken)
    assert exc.value.field == "channels.email"
    with pytest.raises(ValidationError, match="locale tag"):
        await routing.save_template(
            Template(
                name="t", version=0, category=None, channels={"email": {"text": "t"}}, default_locale="??"
            )
        )

    good = Template(
        name="t", version=0, category=None, channels={"email": {"subject": "s", "text": "{{ data.x }}"}}
    )
    stored = await routing.save_template(good)
    assert stored.version == 1 and stored.created_at == NOW
    with pytest.raises(TemplateError, match="with the sample data"):
        await routing.check_template(
            Template(name="t", version=0, category=None, channels={"email": {"text": "{{ data.x.y() }}"}}),
            {"x": 1},
        )

    with pytest.raises(ValidationError) as missing:
        await routing.save_rule("order.paid", {"template": "t", "channels": ["sms"]})
    assert missing.value.field == "channels"
    rule = await routing.save_rule("order.paid", {"template": "t", "channels": ["email"]})
    assert rule.template == "t" and forgotten == ["order.paid"]
    assert [r.event_type for r in await routing.rules()] == ["order.paid"]
    await routing.delete_rule("order.paid")
    with pytest.raises(NotFound):
        await routing.delete_rule("order.paid")
    rendered: dict[str, Any] = await routing.render_stored("t", data={"x": "hello"})
    assert rendered["channels"]["email"]["text"] == "hello"
