"""Who hears what: the one rule deciding whether a user gets a notification on a channel.

Pure functions, no I/O. Every place that decides or shows it calls them: the router (each
delivery it writes), the digest service (the digest message), the preferences views (API,
hosted page, console). A delivery goes through these stages, and the first that says no
decides, with a :class:`~herald.domain.models.Reason`:

1. **reach** (routing): the user exists (``user_deleted``), the channel runs here
   (``channel_disabled``), the user did not opt out where the category allows it
   (``opted_out``), there is an address (``no_address``) and it is not suppressed
   (``invalid_address``);
2. **when** (routing): at once, at the notification's ``send_at``, held for the user's digest of
   the category (reason ``digest``, status ``scheduled``) or held to the end of quiet hours
   (no reason: nothing was refused). Critical notifications are never held;
3. **budget** (routing): over the category's per-user budget (``rate_limited``);
4. **dedup** (the routed write): the same ``dedup_key`` reached the user within the window
   (``duplicate``);
5. **expiry** (the scheduler's sweep, the claim, a retry that would come too late):
   ``expired``;
6. **digest** (the scheduler): an item held for a digest went out inside it (``digested``).

Every skip is told once as the structlog event :data:`SKIPPED_EVENT` with
:func:`skipped_fields`, by whoever committed it (router, deliver, digest, store sweep).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from herald.domain.addresses import address_for
from herald.domain.models import (
    ALL_CHANNELS,
    Category,
    DeliveryStatus,
    Device,
    Preferences,
    Priority,
    Reason,
    User,
)
from herald.domain.quiet_hours import next_digest_time, quiet_until

S = DeliveryStatus

#: The structlog event of every skipped delivery; one per delivery, with its reason.
SKIPPED_EVENT = "delivery.skipped"

#: The reasons a delivery can be skipped with (status ``skipped``), in stage order.
SKIP_REASONS: tuple[Reason, ...] = (
    Reason.USER_DELETED,
    Reason.CHANNEL_DISABLED,
    Reason.OPTED_OUT,
    Reason.NO_ADDRESS,
    Reason.INVALID_ADDRESS,
    Reason.RATE_LIMITED,
    Reason.DUPLICATE,
    Reason.EXPIRED,
    Reason.DIGESTED,
)

# A delivery that ends like this hands a fallback chain over to its next channel.
UNREACHABLE: frozenset[str] = frozenset(
    {
        Reason.NO_ADDRESS.value,
        Reason.OPTED_OUT.value,
        Reason.CHANNEL_DISABLED.value,
        Reason.INVALID_ADDRESS.value,
    }
)

_ALL = frozenset(c.value for c in ALL_CHANNELS)


# -- the user's choice for a (category, channel) -------------------------------------------------
class Source(enum.StrEnum):
    """Why a channel is on or off for a category."""

    REQUIRED = "required"  # the category cannot be opted out of (security, transactional)
    CATEGORY = "category"  # the user's setting for this category on this channel
    CHANNEL = "channel"  # the user's setting for the whole channel
    DEFAULT = "default"  # nothing set: on


@dataclass(frozen=True, slots=True)
class Choice:
    enabled: bool
    source: Source


_REQUIRED = Choice(True, Source.REQUIRED)
_DEFAULT = Choice(True, Source.DEFAULT)


def channel_choice(prefs: Preferences | None, category: Category, channel: str) -> Choice:
    """Whether the user's preferences let ``category`` through on ``channel``, and why.

    The router skips ``opted_out`` exactly where this says off; the preferences views show it."""
    if not category.opt_out:
        return _REQUIRED
    if prefs is None:
        return _DEFAULT
    by_cat = prefs.categories.get(category.name)
    if by_cat and channel in by_cat:
        return Choice(bool(by_cat[channel]), Source.CATEGORY)
    if channel in prefs.channels:
        return Choice(bool(prefs.channels[channel]), Source.CHANNEL)
    return _DEFAULT


def channel_enabled(prefs: Preferences | None, category: Category, channel: str) -> tuple[bool, str]:
    """:func:`channel_choice` as (on, ``"category"``/``"channel"`` when off by a user setting)."""
    choice = channel_choice(prefs, category, channel)
    if choice.enabled:
        return True, ""
    return False, choice.source.value


# -- the decision ---------------------------------------------------------------------------------
class Action(enum.StrEnum):
    DELIVER = "deliver"  # queued now, or scheduled at the notification's send_at
    SKIP = "skip"  # never sent: the reason says why
    HOLD = "hold"  # scheduled later than asked: quiet hours, or held for a digest


class Hold(enum.StrEnum):
    QUIET_HOURS = "quiet_hours"
    DIGEST = "digest"


@dataclass(slots=True)
class Decision:
    """What becomes of one (recipient, channel). ``due_at`` is when it goes (deliver, hold);
    ``reason`` is the skip's reason, or ``digest`` for an item held for a digest."""

    action: Action
    reason: Reason | None = None
    address: str | None = None
    due_at: float = 0.0
    hold: Hold | None = None

    def status(self, now: float) -> DeliveryStatus:
        """The status it is written with at ``now``: skipped, scheduled (held, or due later),
        or queued."""
        if self.action is Action.SKIP:
            return S.SKIPPED
        if self.action is Action.HOLD or self.due_at > now:
            return S.SCHEDULED
        return S.QUEUED


def skip(reason: Reason) -> Decision:
    return Decision(Action.SKIP, reason)


@dataclass(slots=True)
class Facts:
    """What is known of one (recipient, channel) of a notification when it is decided.

    The later stages' results default to "nothing against it": ``over_budget`` (the cache's
    count for the category), ``duplicate`` (the dedup key's holder), ``expires_at``."""

    category: Category
    channel: str
    priority: Priority
    user: User | None
    prefs: Preferences | None = None
    devices: Sequence[Device] = ()
    suppressed: Collection[str] = ()
    enabled_channels: Collection[str] = _ALL
    now: float = 0.0
    send_at: float | None = None
    over_budget: bool = False
    duplicate: bool = False
    expires_at: float | None = None


def reach(f: Facts) -> Decision:
    """Stage 1: a skip, or DELIVER with the address (``due_at`` not decided yet)."""
    user = f.user
    if user is None:
        return skip(Reason.USER_DELETED)
    if f.channel not in f.enabled_channels:
        return skip(Reason.CHANNEL_DISABLED)
    if not channel_choice(f.prefs, f.category, f.channel).enabled:
        return skip(Reason.OPTED_OUT)
    address = address_for(f.channel, user, f.devices)
    if not address:
        return skip(Reason.NO_ADDRESS)
    if address in f.suppressed:
        return skip(Reason.INVALID_ADDRESS)
    return Decision(Action.DELIVER, address=address)


def when(
    category: Category,
    priority: Priority,
    prefs: Preferences | None,
    timezone: str | None,
    *,
    now: float,
    send_at: float | None = None,
    digests: bool = True,
) -> Decision:
    """Stage 2: DELIVER at once or at ``send_at``, or HOLD for a digest or to the end of quiet
    hours. The same rule times the digest message itself (``digests=False``: never held for
    another digest)."""
    due = send_at if send_at is not None and send_at > now else now
    if prefs is None or priority == Priority.CRITICAL:
        return Decision(Action.DELIVER, due_at=due)
    schedule = prefs.digests.get(category.name) if digests else None
    if schedule and category.digest:
        try:
            at = next_digest_time(schedule, timezone, due)
        except ValueError:  # validated on write; an unreadable stored value holds nothing
            at = None
        if at is not None:
            return Decision(Action.HOLD, Reason.DIGEST, due_at=at, hold=Hold.DIGEST)
    if prefs.quiet_hours and category.quiet_hours:
        until = quiet_until(prefs.quiet_hours, timezone, due)
        if until is not None:
            return Decision(Action.HOLD, due_at=until, hold=Hold.QUIET_HOURS)
    return Decision(Action.DELIVER, due_at=due)


def counts_against_budget(
    category: Category | None, priority: Priority, status: DeliveryStatus, reason: str | None
) -> bool:
    """Stage 3's scope: what is about to go out (queued or scheduled), of a category with a
    budget. Critical never counts, nor an item held for a digest (the user gets one message,
    not this one)."""
    if status not in (S.QUEUED, S.SCHEDULED) or reason == Reason.DIGEST:
        return False
    return priority != Priority.CRITICAL and category is not None and bool(category.budget)


def dedup_applies(status: DeliveryStatus) -> bool:
    """Stage 4's scope: only what is about to go out claims the dedup key."""
    return status in (S.QUEUED, S.SCHEDULED)


def expired(expires_at: float | None, at: float) -> bool:
    """Stage 5: a delivery whose ``expires_at`` has come by ``at`` is skipped ``expired``."""
    return expires_at is not None and expires_at <= at


def decide(f: Facts) -> Decision:
    """Every stage known at once, in order: the first that says no decides."""
    first = reach(f)
    if first.action is Action.SKIP:
        return first
    assert f.user is not None
    decision = when(f.category, f.priority, f.prefs, f.user.timezone, now=f.now, send_at=f.send_at)
    decision.address = first.address
    status = decision.status(f.now)
    if f.over_budget and counts_against_budget(f.category, f.priority, status, decision.reason):
        return skip(Reason.RATE_LIMITED)
    if f.duplicate and dedup_applies(status):
        return skip(Reason.DUPLICATE)
    if expired(f.expires_at, decision.due_at):
        return skip(Reason.EXPIRED)
    return decision


def moves_on(status: DeliveryStatus, reason: str | None) -> bool:
    """A fallback chain moves to its next channel after this: failed for good, or unreachable."""
    if status in (S.FAILED, S.DEAD):
        return True
    return status == S.SKIPPED and reason in UNREACHABLE


def skipped_fields(
    delivery_id: str,
    reason: Reason | str,
    *,
    notification_id: str | None = None,
    channel: str | None = None,
) -> dict[str, str]:
    """The fields of the :data:`SKIPPED_EVENT` of one delivery."""
    fields = {"delivery_id": delivery_id, "reason": str(reason)}
    if notification_id is not None:
        fields["notification_id"] = notification_id
    if channel is not None:
        fields["channel"] = channel
    return fields
