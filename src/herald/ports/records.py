"""The records passed across the store's ports: filters, batches, plans and what comes back.

Plain dataclasses of domain values, no behaviour; the role protocols of :mod:`herald.ports.store`
take and return them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from herald.domain.models import (
    JSON,
    Delivery,
    Device,
    Notification,
    Preferences,
    User,
)


# Directory ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class UserImport:
    """One checked user object of a batch (services.user_import), ready to be written."""

    user: User
    devices: list[Device] = field(default_factory=list)
    preferences: Preferences | None = None
    topics: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RecipientContext:
    """Everything routing needs to know of a set of stored users, read in one go."""

    users: dict[str, User]
    preferences: dict[str, Preferences]
    devices: dict[str, list[Device]]
    suppressed: dict[str, set[str]]  # channel -> addresses of these users that are suppressed


# Accepting, routing, results ---------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Promoted:
    """What one promotion of scheduled deliveries moved to queued."""

    channels: list[str]  # sorted, each once
    count: int


@dataclass(slots=True)
class IdempotencyRecord:
    """A committed request's idempotency key: the hash of its body and the answer it got."""

    request_hash: str
    state: str  # "done" (rows are written with what the request committed, see IdempotencyClaim)
    status_code: int | None = None
    response: JSON | None = None


@dataclass(slots=True, frozen=True)
class IdempotencyClaim:
    """An idempotency key to write, done, with the notifications a request commits."""

    scope: str
    key: str
    request_hash: str
    status_code: int
    response: JSON
    created_at: float
    expires_at: float


@dataclass(slots=True)
class NotificationFilter:
    """``status``: the notification's status as the API shows it (``accepted``, ``routing``,
    ``in_progress``, ``completed``, ``cancelled``, ``failed``; ``routed`` is either of the two);
    ``delivery_status``: it has at least one delivery in that status."""

    user_id: str | None = None
    status: str | None = None
    delivery_status: str | None = None
    channel: str | None = None
    since: float | None = None
    until: float | None = None
    cursor: str | None = None
    limit: int = 50


@dataclass(slots=True)
class EngagementEvent:
    """An open or a click of a delivery: ``kind`` is ``opened`` or ``clicked`` (``link``: the
    link's index in the message, ``url`` its target); ``source`` what reported it (``pixel``,
    ``redirect``, ``client``, ``provider``); ``machine`` with ``why`` when a proxy, scanner
    or bot did it (counted apart)."""

    delivery_id: str
    kind: str
    at: float
    source: str
    machine: bool = False
    why: str | None = None
    link: int = -1
    url: str | None = None
    user_agent: str | None = None


@dataclass(slots=True)
class Engagement:
    """What recording an event did: the delivery after it, the funnel metrics it counted
    (empty for a repeat), and whether it moved the delivery to ``read``."""

    delivery: Delivery
    counted: tuple[str, ...]
    moved: bool


@dataclass(slots=True)
class FunnelQuery:
    """The funnel over [since, until) (epoch seconds; whole hours), grouped by ``by`` (any of
    template, category, channel, provider) and ``bucket`` (``hour``, ``day`` or None: the whole
    range), restricted by ``filters`` ({dimension: value})."""

    by: tuple[str, ...] = ()
    bucket: str | None = None
    since: float | None = None
    until: float | None = None
    filters: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DeadLetterFilter:
    """Which dead deliveries to list: every given field must match (``since``/``until``: when
    the delivery died, epoch seconds); ``cursor`` is the last id of the previous page."""

    channel: str | None = None
    provider: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None
    cursor: str | None = None
    limit: int = 100
    code: str | None = None  # the last attempt's code (a provider's error code)


@dataclass(slots=True)
class RoutedBatch:
    """What the router writes for one chunk of recipients, in one transaction."""

    notification_id: str
    deliveries: list[Delivery]
    recipients_done: int
    finished: bool
    recipients_total: int | None = None
    cursor: str | None = None  # topic fan-out: the last subscriber in this chunk
    dedup_key: str | None = None
    dedup_window: float = 86_400.0


@dataclass(slots=True, frozen=True)
class RoutedClaim:
    """Routed deliveries to write already claimed, for a sender in the routing process.

    Of ``ids``, those still ``queued`` once dedup has run go in as ``sending`` under
    ``owner``'s lease until ``until`` (no outbox row, no claim transaction): the process that
    routed them sends them at once. Should it die first, the lease runs out as any claim's.
    """

    owner: str
    until: float
    ids: frozenset[str]


# Digests (issue 4) -------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class DigestGroup:
    """Held items of one user, category and channel, some of which are due."""

    user_id: str
    category: str
    channel: str


@dataclass(slots=True)
class DigestPlan:
    """One digest, written in one transaction: the digest notification and its delivery, and
    the held items it replaces (marked ``skipped``/``digested`` with ``item_contents``)."""

    notification: Notification
    delivery: Delivery
    item_contents: dict[str, JSON]  # held delivery id -> its content, with the pointer to the digest


DigestSaved = Literal["saved", "exists", "changed"]


# Broker queue and leader election (issue 5) --------------------------------------------------------
@dataclass(slots=True, frozen=True)
class OutboxItem:
    """A delivery to publish to the broker once ``due_at`` has come (transactional outbox)."""

    id: int
    delivery_id: str
    channel: str
    priority: int  # rank: 0 critical .. 3 low
    due_at: float


@dataclass(slots=True, frozen=True)
class NamedLease:
    """Who holds a named lease (for example the active scheduler) and until when."""

    name: str
    owner: str
    until: float
    acquired_at: float
