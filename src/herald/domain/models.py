"""Domain types. Plain dataclasses: no I/O, no framework."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Defined apart so that `herald keys create` need not build every type below; re-exported
# (`X as X`, PEP 484): herald imports them from here.
from herald.domain.ids import new_id as new_id  # noqa: PLC0414
from herald.domain.keys import ApiKey as ApiKey  # noqa: PLC0414

JSON = dict[str, Any]


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    IN_APP = "in_app"
    WEBHOOK = "webhook"
    CHAT = "chat"


ALL_CHANNELS: tuple[Channel, ...] = tuple(Channel)


class Priority(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Lower rank is claimed first."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        return _RANK_PRIORITY[rank]


_PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}
_RANK_PRIORITY = {v: k for k, v in _PRIORITY_RANK.items()}


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    RETRYING = "retrying"
    FAILED = "failed"
    DEAD = "dead"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class NotificationStatus(enum.StrEnum):
    ACCEPTED = "accepted"  # committed, not yet expanded into deliveries
    ROUTING = "routing"  # a router holds it (lease)
    ROUTED = "routed"  # every delivery exists
    CANCELLED = "cancelled"
    FAILED = "failed"  # routing itself failed (for example the template vanished)


class Outcome(enum.StrEnum):
    OK = "ok"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    DEAD_ADDRESS = "dead_address"
    CONFIG_ERROR = "config_error"
    LOST = "lost"  # the worker died mid-send; the provider may or may not have it
    EXPIRED = "expired"


class Reason(enum.StrEnum):
    """Every reason herald writes on a delivery, with the status it goes with.

    Who decides the skips: :mod:`herald.domain.audience` (who hears what)."""

    OPTED_OUT = "opted_out"  # skipped: the user turned this category/channel off
    RATE_LIMITED = "rate_limited"  # skipped: over the category's per-user budget
    DUPLICATE = "duplicate"  # skipped: the same dedup_key reached the user within the window
    NO_ADDRESS = "no_address"  # skipped: the user has no address on the channel
    INVALID_ADDRESS = "invalid_address"  # skipped: the address is suppressed; failed: found dead
    EXPIRED = "expired"  # skipped: its expires_at came before it could be sent
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a reason name, not a secret
    CHANNEL_DISABLED = "channel_disabled"  # skipped: the channel is off in herald's configuration
    PERMANENT_ERROR = "permanent_error"  # failed: the provider refused it for good
    RETRIES_EXHAUSTED = "retries_exhausted"  # dead: every attempt of the retry schedule failed
    CANCELLED = "cancelled"  # cancelled: the notification was cancelled before it was sent
    RENDER_ERROR = "render_error"  # failed: the template could not be rendered for the user
    USER_DELETED = "user_deleted"  # skipped: the user no longer exists
    DIGEST = "digest"  # scheduled: held for the user's digest of its category
    DIGESTED = "digested"  # skipped: went out inside a digest (content["digest"] names it)
    BLOCKED_ADDRESS = "blocked_address"  # failed: the SSRF guard refused the destination
    PROVIDER_CONFIG_ERROR = "provider_config_error"  # retrying: held while herald's own setup is wrong
    TRANSIENT = "transient"  # retrying: the last attempt failed for a passing cause
    BOUNCED = "bounced"  # failed: the provider reported the address dead after sending it
    COMPLAINT = "complaint"  # (a suppression's reason) the user unsubscribed or reported spam


def now() -> float:
    return time.time()


@dataclass(slots=True)
class Device:
    id: str
    user_id: str
    kind: str  # apns | fcm | webpush
    token: str
    data: JSON = field(default_factory=dict)
    active: bool = True
    created_at: float = 0.0


@dataclass(slots=True)
class User:
    id: str
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None
    data: JSON = field(default_factory=dict)
    webhook_url: str | None = None
    chat: JSON = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    def template_view(self) -> JSON:
        return {
            "id": self.id,
            "email": self.email,
            "phone": self.phone,
            "locale": self.locale,
            "timezone": self.timezone,
            "data": self.data,
        }


@dataclass(slots=True)
class Preferences:
    """A user's stored choices. Absent keys fall back to configuration defaults."""

    user_id: str
    channels: dict[str, bool] = field(default_factory=dict)
    categories: dict[str, dict[str, bool]] = field(default_factory=dict)  # category -> channel -> on
    quiet_hours: JSON | None = None
    digests: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Category:
    name: str
    opt_out: bool = True
    priority: Priority = Priority.NORMAL
    quiet_hours: bool = True
    digest: bool = False
    budget: str | None = None
    digest_template: str | None = None  # stored template for digests; None: the built-in one
    digest_items: int = 10  # items listed in a digest; the rest are counted as "more"
    tracking: bool | None = None  # email opens and clicks; None: tracked where users may opt out


@dataclass(slots=True)
class Template:
    name: str
    version: int
    category: str | None
    channels: dict[str, dict[str, Any]]
    locales: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    default_locale: str = "en"
    created_at: float = 0.0

    def variant(self, channel: str, locale: str | None) -> dict[str, Any] | None:
        """The channel's fields for ``locale``, each falling back to the default variant."""
        base = self.channels.get(channel)
        if base is None:
            return None
        merged = dict(base)
        for candidate in _locale_chain(locale):
            override = self.locales.get(candidate, {}).get(channel)
            if override:
                merged.update(override)
                break
        return merged


def _locale_chain(locale: str | None) -> list[str]:
    if not locale:
        return []
    chain = [locale]
    base = locale.replace("_", "-").split("-")[0]
    if base != locale:
        chain.append(base)
    return chain


@dataclass(slots=True)
class Recipient:
    """Who a notification goes to: a stored user id or an inline profile."""

    user_id: str
    inline: User | None = None


@dataclass(slots=True)
class Notification:
    id: str
    status: NotificationStatus
    recipients: list[Recipient]
    template: str | None
    template_version: int | None
    content: JSON | None
    data: JSON
    channels: list[str] | None
    category: str
    priority: Priority
    send_at: float | None = None
    expires_at: float | None = None
    dedup_key: str | None = None
    api_key_id: str | None = None
    topic: str | None = None
    event_type: str | None = None
    recipients_total: int = 0
    recipients_routed: int = 0
    error: str | None = None
    created_at: float = 0.0
    routed_at: float | None = None
    fallback: bool = False  # channels are a chain: the first reachable one, the next on failure
    route_cursor: str | None = None  # topic fan-out: the last subscriber routed
    # Accepted already leased to a router of this process (critical/high: routed at once, see
    # RouterService.route_now); written with the notification, in its transaction.
    routing_owner: str | None = None
    routing_until: float | None = None


@dataclass(slots=True)
class Attempt:
    n: int
    at: float
    provider: str
    outcome: Outcome
    code: str | None = None
    detail: str | None = None
    latency_ms: float | None = None
    ambiguous: bool = False


@dataclass(slots=True)
class Delivery:
    id: str
    notification_id: str
    user_id: str
    channel: str
    status: DeliveryStatus
    priority: Priority
    category: str
    address: str | None
    content: JSON
    reason: str | None = None
    provider: str | None = None
    attempts_made: int = 0  # every attempt, numbering them
    budget_used: int = 0  # attempts that count against the retry schedule
    due_at: float = 0.0
    expires_at: float | None = None
    created_at: float = 0.0
    queued_at: float | None = None
    sent_at: float | None = None
    delivered_at: float | None = None
    read_at: float | None = None
    failed_at: float | None = None
    updated_at: float = 0.0
    provider_message_id: str | None = None
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(slots=True)
class OutboundMessage:
    """What a provider gets: one rendered message to one address."""

    delivery_id: str
    notification_id: str
    user_id: str
    channel: str
    address: str
    content: JSON
    category: str
    priority: Priority
    attempt: int
    expires_at: float | None = None
    unsubscribe_url: str | None = None
    metadata: JSON = field(default_factory=dict)


@dataclass(slots=True)
class SendReceipt:
    """A provider's acceptance of a message."""

    code: str | None = None
    provider_message_id: str | None = None
    detail: str | None = None
    provider: str | None = None  # set by composite providers (failover) to the one that sent


@dataclass(slots=True)
class DeliveryResult:
    """One finished send attempt, as the deliver service records it."""

    delivery_id: str
    lease_owner: str
    attempt: Attempt
    new_status: DeliveryStatus
    reason: str | None = None
    due_at: float | None = None
    provider_message_id: str | None = None
    dead_address: str | None = None
    counts_against_budget: bool = True
    channel: str = ""
    notification_id: str = ""
    fallback: bool = False  # a failure hands over to the next channel of the notification's chain


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """A provider's status callback as it arrived: what a provider needs to verify and parse it.

    ``url`` is the public URL the provider called (what it signed), built from the configured
    public base; ``headers`` have lower-case names.
    """

    url: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class CallbackEvent:
    """A provider's status callback, verified and parsed into herald's terms.

    ``status`` is ``delivered``, ``failed`` (the provider gave up) or ``bounced`` (the address
    is dead: the delivery fails and the address is suppressed), ``opened``/``clicked``
    (engagement; recorded, status unchanged), or ``unsubscribed`` / ``spam`` (suppress).
    ``event_id`` is the provider's id for the event, so a replayed callback applies once.
    """

    provider: str
    status: str
    delivery_id: str | None = None
    provider_message_id: str | None = None
    address: str | None = None
    event_id: str | None = None
    code: str | None = None
    detail: str | None = None
    at: float | None = None


@dataclass(slots=True)
class Topic:
    key: str
    name: str | None = None
    data: JSON = field(default_factory=dict)
    subscribers: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(slots=True)
class EventRecord:
    """An event as received and what became of it: ``accepted`` (a notification was made),
    ``skipped`` (the rule's condition was false) or ``unrouted`` (no rule; kept by configuration)."""

    id: str
    type: str
    status: str
    body: JSON
    source: str = "http"
    reason: str | None = None
    detail: str | None = None
    notification_id: str | None = None
    created_at: float = 0.0
