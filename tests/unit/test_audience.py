"""Who hears what, the pure rule (herald.domain.audience): one table row per outcome, every
skip reason among them, and the preferences views' choice is the router's."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from herald.domain import audience
from herald.domain.audience import Action, Choice, Decision, Facts, Hold, Source
from herald.domain.models import (
    Category,
    DeliveryStatus,
    Device,
    Preferences,
    Priority,
    Reason,
    User,
)

PARIS = ZoneInfo("Europe/Paris")
# Wednesday 2026-06-10, 23:30 in Paris: inside 22:00-07:00 quiet hours
NIGHT = datetime(2026, 6, 10, 23, 30, tzinfo=PARIS).timestamp()
SEVEN = datetime(2026, 6, 11, 7, 0, tzinfo=PARIS).timestamp()
NINE = datetime(2026, 6, 11, 9, 0, tzinfo=PARIS).timestamp()

MARKETING = Category(name="marketing", opt_out=True, digest=True, budget="3/day")
SECURITY = Category(name="security", opt_out=False, quiet_hours=False)
ANA = User(id="ana", email="ana@example.com", timezone="Europe/Paris")
QUIET = {"start": "22:00", "end": "07:00"}


def facts(**kw: Any) -> Facts:
    base: dict[str, Any] = {
        "category": MARKETING,
        "channel": "email",
        "priority": Priority.NORMAL,
        "user": ANA,
        "prefs": None,
        "now": NIGHT,
    }
    return Facts(**(base | kw))


def prefs(**kw: Any) -> Preferences:
    return Preferences(user_id="ana", **kw)


# (id, facts, action, reason, due_at, hold)
TABLE: list[tuple[str, Facts, Action, Reason | None, float | None, Hold | None]] = [
    ("delivered at once", facts(), Action.DELIVER, None, NIGHT, None),
    ("at its send_at", facts(send_at=NIGHT + 60), Action.DELIVER, None, NIGHT + 60, None),
    ("user deleted", facts(user=None), Action.SKIP, Reason.USER_DELETED, None, None),
    (
        "channel off in herald",
        facts(enabled_channels=frozenset({"sms"})),
        Action.SKIP,
        Reason.CHANNEL_DISABLED,
        None,
        None,
    ),
    (
        "opted out of the category on the channel",
        facts(prefs=prefs(categories={"marketing": {"email": False}})),
        Action.SKIP,
        Reason.OPTED_OUT,
        None,
        None,
    ),
    (
        "opted out of the whole channel",
        facts(prefs=prefs(channels={"email": False})),
        Action.SKIP,
        Reason.OPTED_OUT,
        None,
        None,
    ),
    (
        "a category that cannot be opted out of goes through",
        facts(category=SECURITY, prefs=prefs(channels={"email": False})),
        Action.DELIVER,
        None,
        NIGHT,
        None,
    ),
    ("no address", facts(channel="sms"), Action.SKIP, Reason.NO_ADDRESS, None, None),
    ("push without a device", facts(channel="push"), Action.SKIP, Reason.NO_ADDRESS, None, None),
    (
        "suppressed address",
        facts(suppressed={"ana@example.com"}),
        Action.SKIP,
        Reason.INVALID_ADDRESS,
        None,
        None,
    ),
    (
        "quiet hours hold to their end",
        facts(prefs=prefs(quiet_hours=QUIET)),
        Action.HOLD,
        None,
        SEVEN,
        Hold.QUIET_HOURS,
    ),
    (
        "critical is never held",
        facts(
            prefs=prefs(quiet_hours=QUIET, digests={"marketing": "daily@09:00"}), priority=Priority.CRITICAL
        ),
        Action.DELIVER,
        None,
        NIGHT,
        None,
    ),
    (
        "a category without quiet hours is not held",
        facts(category=SECURITY, prefs=prefs(quiet_hours=QUIET)),
        Action.DELIVER,
        None,
        NIGHT,
        None,
    ),
    (
        "held for the user's digest",
        facts(prefs=prefs(digests={"marketing": "daily@09:00"}, quiet_hours=QUIET)),
        Action.HOLD,
        Reason.DIGEST,
        NINE,
        Hold.DIGEST,
    ),
    (
        "an unreadable digest schedule holds nothing",
        facts(prefs=prefs(digests={"marketing": "fortnightly"})),
        Action.DELIVER,
        None,
        NIGHT,
        None,
    ),
    ("over budget", facts(over_budget=True), Action.SKIP, Reason.RATE_LIMITED, None, None),
    (
        "critical never counts against a budget",
        facts(over_budget=True, priority=Priority.CRITICAL),
        Action.DELIVER,
        None,
        NIGHT,
        None,
    ),
    (
        "a digest item never counts against a budget",
        facts(over_budget=True, prefs=prefs(digests={"marketing": "daily@09:00"})),
        Action.HOLD,
        Reason.DIGEST,
        NINE,
        Hold.DIGEST,
    ),
    ("a duplicate", facts(duplicate=True), Action.SKIP, Reason.DUPLICATE, None, None),
    (
        "a skip stays a skip whatever comes later",
        facts(user=None, duplicate=True, over_budget=True),
        Action.SKIP,
        Reason.USER_DELETED,
        None,
        None,
    ),
    ("expired", facts(expires_at=NIGHT), Action.SKIP, Reason.EXPIRED, None, None),
    (
        "held past its expiry: it expires",
        facts(prefs=prefs(quiet_hours=QUIET), expires_at=SEVEN - 1),
        Action.SKIP,
        Reason.EXPIRED,
        None,
        None,
    ),
    (
        "expiring after it goes: delivered",
        facts(expires_at=NIGHT + 1),
        Action.DELIVER,
        None,
        NIGHT,
        None,
    ),
]


@pytest.mark.parametrize(
    ("f", "action", "reason", "due_at", "hold"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_decide(
    f: Facts, action: Action, reason: Reason | None, due_at: float | None, hold: Hold | None
) -> None:
    got = audience.decide(f)
    assert (got.action, got.reason, got.hold) == (action, reason, hold)
    if due_at is not None:
        assert got.due_at == due_at
    if action is not Action.SKIP:
        assert got.address == "ana@example.com"


def test_every_skip_reason_routing_can_decide_is_in_the_table() -> None:
    decided = {row[3] for row in TABLE if row[2] is Action.SKIP}
    # digested is the digest's own doing (an item folded into it), not a decision of routing
    assert decided == set(audience.SKIP_REASONS) - {Reason.DIGESTED}
    assert all(isinstance(r, Reason) for r in audience.SKIP_REASONS)


@pytest.mark.parametrize(
    ("decision", "status"),
    [
        (Decision(Action.SKIP, Reason.OPTED_OUT), DeliveryStatus.SKIPPED),
        (Decision(Action.DELIVER, due_at=NIGHT), DeliveryStatus.QUEUED),
        (Decision(Action.DELIVER, due_at=NIGHT + 1), DeliveryStatus.SCHEDULED),
        (Decision(Action.HOLD, due_at=SEVEN, hold=Hold.QUIET_HOURS), DeliveryStatus.SCHEDULED),
    ],
)
def test_the_status_a_decision_is_written_with(decision: Decision, status: DeliveryStatus) -> None:
    assert decision.status(NIGHT) == status


CHOICES: list[tuple[str, Category, Preferences | None, Choice]] = [
    ("no preferences", MARKETING, None, Choice(True, Source.DEFAULT)),
    ("nothing set for it", MARKETING, prefs(channels={"sms": False}), Choice(True, Source.DEFAULT)),
    (
        "category off",
        MARKETING,
        prefs(categories={"marketing": {"email": False}}),
        Choice(False, Source.CATEGORY),
    ),
    (
        "category on beats channel off",
        MARKETING,
        prefs(channels={"email": False}, categories={"marketing": {"email": True}}),
        Choice(True, Source.CATEGORY),
    ),
    ("channel off", MARKETING, prefs(channels={"email": False}), Choice(False, Source.CHANNEL)),
    ("channel on", MARKETING, prefs(channels={"email": True}), Choice(True, Source.CHANNEL)),
    ("required", SECURITY, prefs(categories={"security": {"email": False}}), Choice(True, Source.REQUIRED)),
]


@pytest.mark.parametrize(
    ("category", "p", "expected"), [row[1:] for row in CHOICES], ids=[row[0] for row in CHOICES]
)
def test_channel_choice(category: Category, p: Preferences | None, expected: Choice) -> None:
    assert audience.channel_choice(p, category, "email") == expected
    # the router skips opted_out exactly where the preferences views show "off"
    skipped = audience.decide(facts(category=category, prefs=p)).reason == Reason.OPTED_OUT
    assert skipped is not expected.enabled
    on, why = audience.channel_enabled(p, category, "email")
    assert on is expected.enabled and (why == "" if on else why == expected.source.value)


def test_the_digest_message_itself_is_held_by_quiet_hours_never_for_another_digest() -> None:
    p = prefs(digests={"marketing": "daily@09:00"}, quiet_hours=QUIET)
    got = audience.when(MARKETING, Priority.NORMAL, p, ANA.timezone, now=NIGHT, digests=False)
    assert (got.action, got.hold, got.due_at) == (Action.HOLD, Hold.QUIET_HOURS, SEVEN)


@pytest.mark.parametrize(
    ("channel", "user", "devices", "address"),
    [
        ("email", ANA, [], "ana@example.com"),
        ("sms", replace(ANA, phone="+33612345678"), [], "+33612345678"),
        ("in_app", ANA, [], "ana"),
        ("webhook", replace(ANA, webhook_url="https://example.com/h"), [], "https://example.com/h"),
        ("chat", replace(ANA, chat={"url": "https://chat.example.com/x"}), [], "https://chat.example.com/x"),
        (
            "push",
            ANA,
            [
                Device(id="d1", user_id="ana", kind="fcm", token="old"),
                Device(id="d2", user_id="ana", kind="fcm", token="new"),
            ],
            "new",
        ),
        ("fax", ANA, [], None),
    ],
)
def test_address_for(channel: str, user: User, devices: list[Device], address: str | None) -> None:
    assert audience.address_for(channel, user, devices) == address


@pytest.mark.parametrize(
    ("status", "reason", "moves"),
    [
        (DeliveryStatus.FAILED, Reason.PERMANENT_ERROR, True),
        (DeliveryStatus.DEAD, Reason.RETRIES_EXHAUSTED, True),
        (DeliveryStatus.SKIPPED, Reason.NO_ADDRESS, True),
        (DeliveryStatus.SKIPPED, Reason.OPTED_OUT, True),
        (DeliveryStatus.SKIPPED, Reason.RATE_LIMITED, False),
        (DeliveryStatus.SKIPPED, Reason.DUPLICATE, False),
        (DeliveryStatus.QUEUED, None, False),
    ],
)
def test_a_fallback_chain_moves_on(status: DeliveryStatus, reason: Reason | None, moves: bool) -> None:
    assert audience.moves_on(status, reason) is moves


def test_skipped_fields() -> None:
    assert audience.skipped_fields("dlv_1", Reason.EXPIRED, notification_id="ntf_1", channel="sms") == {
        "delivery_id": "dlv_1",
        "reason": "expired",
        "notification_id": "ntf_1",
        "channel": "sms",
    }
    assert audience.skipped_fields("dlv_1", "duplicate") == {"delivery_id": "dlv_1", "reason": "duplicate"}
