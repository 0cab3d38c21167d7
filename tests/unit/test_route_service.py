"""RouterService on the in-memory store and a fake clock: one notification in, its deliveries out,
each with the status and reason who-hears-what gives it. No HTTP, no worker, no sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from herald.adapters.store.sql import SqlStore
from herald.bootstrap import build_catalog
from herald.config import Settings
from herald.domain.models import (
    Delivery,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Preferences,
    Priority,
    Recipient,
    Template,
    User,
    new_id,
)
from herald.services.route import RouterService
from herald.services.signing import Signer, UnsubscribeSigner
from herald.testing import FakeClock, memory_store

# 2027-01-15 12:00 UTC, a Friday: 13:00 in Paris
NOON = 1_800_000_000.0 - (1_800_000_000.0 % 86_400) + 12 * 3600
PARIS = ZoneInfo("Europe/Paris")
WELCOME = Template(
    name="welcome",
    version=1,
    category="transactional",
    channels={
        "email": {"subject": "Welcome, {{ user.data.name }}", "text": "Code {{ data.code }}"},
        "sms": {"text": "Code {{ data.code }}"},
        "in_app": {"title": "Welcome", "body": "Code {{ data.code }}"},
    },
)


@dataclass
class Routing:
    store: SqlStore
    clock: FakeClock
    router: RouterService
    woken: list[tuple[str, int]] = field(default_factory=list)

    async def send(self, to: str, *, category: str = "transactional", channels: list[str], **kw: Any) -> str:
        n = Notification(
            id=new_id("ntf"),
            status=NotificationStatus.ACCEPTED,
            recipients=[Recipient(user_id=to)],
            template=WELCOME.name,
            template_version=1,
            content=None,
            data={"code": "1234"},
            channels=channels,
            category=category,
            priority=kw.pop("priority", Priority.NORMAL),
            recipients_total=1,
            created_at=self.clock.now(),
            **kw,
        )
        await self.store.create_notifications([n])
        assert await self.router.route_pending() == 1
        return n.id

    async def deliveries(self, nid: str) -> dict[str, Delivery]:
        return {d.channel: d for d in await self.store.get_deliveries(nid)}


@pytest.fixture
async def routing() -> AsyncIterator[Routing]:
    store, clock = memory_store(), FakeClock(NOON)
    await store.start()
    settings = Settings()
    woken: list[tuple[str, int]] = []
    router = RouterService(
        store,
        clock,
        build_catalog(settings),
        lambda channel, rank: woken.append((channel, rank)),
        UnsubscribeSigner(Signer(b"k" * 32), "https://herald.example.com"),
    )
    await store.put_template(WELCOME)
    await store.put_user(User(id="ana", email="ana@example.com", phone="+33612345678", data={"name": "Ana"}))
    await store.put_user(User(id="bob", email="bob@example.com", timezone="Europe/Paris"))
    yield Routing(store, clock, router, woken)
    await store.close()


async def test_each_channel_gets_a_queued_delivery_with_its_variant_rendered(routing: Routing) -> None:
    nid = await routing.send("ana", channels=["email", "sms"])
    got = await routing.deliveries(nid)
    assert {c: d.status for c, d in got.items()} == {
        "email": DeliveryStatus.QUEUED,
        "sms": DeliveryStatus.QUEUED,
    }
    assert got["email"].address == "ana@example.com" and got["sms"].address == "+33612345678"
    assert got["email"].content["subject"] == "Welcome, Ana"
    assert got["sms"].content["text"] == "Code 1234"
    assert {c for c, _ in routing.woken} == {"email", "sms"}, "the senders of each channel are woken"
    assert (await routing.store.get_notification(nid)).status != NotificationStatus.ACCEPTED  # type: ignore[union-attr]


async def test_a_channel_without_an_address_is_skipped_no_address(routing: Routing) -> None:
    nid = await routing.send("bob", channels=["email", "sms"])
    got = await routing.deliveries(nid)
    assert got["email"].status == DeliveryStatus.QUEUED
    assert (got["sms"].status, got["sms"].reason) == (DeliveryStatus.SKIPPED, "no_address")


async def test_an_opt_out_skips_where_the_category_allows_it_only(routing: Routing) -> None:
    await routing.store.put_preferences(
        Preferences(user_id="ana", categories={"marketing": {"email": False}, "security": {"email": False}})
    )
    marketing = await routing.deliveries(await routing.send("ana", category="marketing", channels=["email"]))
    assert (marketing["email"].status, marketing["email"].reason) == (DeliveryStatus.SKIPPED, "opted_out")
    security = await routing.deliveries(await routing.send("ana", category="security", channels=["email"]))
    assert security["email"].status == DeliveryStatus.QUEUED, "security may not be opted out of"


async def test_quiet_hours_defer_to_their_end_and_critical_goes_through(routing: Routing) -> None:
    # 13:00 in Paris: quiet from 12:00 to 14:00 local
    await routing.store.put_preferences(
        Preferences(user_id="bob", quiet_hours={"start": "12:00", "end": "14:00"})
    )
    nid = await routing.send("bob", category="marketing", channels=["email"])
    held = (await routing.deliveries(nid))["email"]
    assert held.status == DeliveryStatus.SCHEDULED
    assert held.due_at == NOON + 3600, "deferred to 14:00 Paris, not dropped"
    urgent = await routing.deliveries(
        await routing.send("bob", category="marketing", channels=["email"], priority=Priority.CRITICAL)
    )
    assert urgent["email"].status == DeliveryStatus.QUEUED


async def test_routing_twice_writes_nothing_twice(routing: Routing) -> None:
    nid = await routing.send("ana", channels=["email"])
    assert await routing.router.route_pending() == 0
    assert len(await routing.store.get_deliveries(nid)) == 1


async def test_a_digest_holds_the_delivery_to_the_users_digest_time(routing: Routing) -> None:
    quiet = {"start": "12:00", "end": "14:00"}
    await routing.store.put_preferences(
        Preferences(user_id="bob", digests={"marketing": "daily@09:00"}, quiet_hours=quiet)
    )
    nid = await routing.send("bob", category="marketing", channels=["email"])
    held = (await routing.deliveries(nid))["email"]
    assert (held.status, held.reason) == (DeliveryStatus.SCHEDULED, "digest")
    assert held.due_at == NOON + 20 * 3600, "09:00 Paris the next day: the digest, not the end of quiet hours"


async def test_send_at_schedules_and_the_senders_are_not_woken(routing: Routing) -> None:
    nid = await routing.send("ana", channels=["email"], send_at=NOON + 600)
    later = (await routing.deliveries(nid))["email"]
    assert (later.status, later.due_at, later.reason) == (DeliveryStatus.SCHEDULED, NOON + 600, None)
    assert routing.woken == []


async def test_a_fallback_chain_takes_the_first_channel_the_user_can_be_reached_on(routing: Routing) -> None:
    nid = await routing.send("bob", channels=["sms", "email", "in_app"], fallback=True)
    got = await routing.deliveries(nid)
    assert (got["sms"].status, got["sms"].reason) == (DeliveryStatus.SKIPPED, "no_address")
    assert got["email"].status == DeliveryStatus.QUEUED and got["email"].content["_meta"]["fallback"] is True
    assert "in_app" not in got, "the chain stops at the first channel that takes it"
