"""The contracts between services and adapters.

Every backend implements one of these protocols and passes the same contract suite in
``tests/contract``. Arguments and results are domain types; adapters translate driver errors
into :class:`herald.domain.errors.ServiceUnavailable` at the boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from herald.domain.models import (
    JSON,
    ApiKey,
    CallbackEvent,
    CallbackRequest,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    Device,
    EventRecord,
    Notification,
    OutboundMessage,
    Preferences,
    SendReceipt,
    Template,
    Topic,
    User,
)
from herald.domain.rules import Rule


@dataclass(slots=True)
class UserImport:
    """One checked user object of a batch (services.user_import), ready to be written."""

    user: User
    devices: list[Device] = field(default_factory=list)
    preferences: Preferences | None = None
    topics: list[str] = field(default_factory=list)


class Clock(Protocol):
    """Wall-clock time. Tests substitute a clock they can move."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...


@dataclass(slots=True, frozen=True)
class Promoted:
    """What one promotion of scheduled deliveries moved to queued."""

    channels: list[str]  # sorted, each once
    count: int


@dataclass(slots=True)
class IdempotencyRecord:
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


@dataclass(slots=True)
class RecipientContext:
    """Everything routing needs to know of a set of stored users, read in one go."""

    users: dict[str, User]
    preferences: dict[str, Preferences]
    devices: dict[str, list[Device]]
    suppressed: dict[str, set[str]]  # channel -> addresses of these users that are suppressed


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


class Store(Protocol):
    """The status log: the one source of truth for what happened.

    Every method is one transaction. Methods that change a delivery's status only do so from
    the statuses the state machine allows and report how many rows changed.
    """

    async def start(self) -> None:
        """Connect and make sure the schema is current."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ServiceUnavailable when the backend cannot answer."""
        ...

    # API keys -----------------------------------------------------------------------------
    async def create_api_key(self, key: ApiKey, key_hash: str) -> None: ...

    async def get_api_key(self, key_hash: str) -> ApiKey | None: ...

    async def list_api_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Keys with their name, scopes, creation and last use; never their hash."""
        ...

    async def revoke_api_keys(self, ids_or_names: Sequence[str], *, now: float) -> list[ApiKey]:
        """Revoke the live keys with these ids or names; return those revoked."""
        ...

    async def touch_api_key(self, key_id: str, now: float) -> None: ...

    async def get_setting(self, name: str) -> str | None: ...

    async def put_setting_if_absent(self, name: str, value: str) -> str:
        """Store ``value`` unless a value exists; return the stored one."""
        ...

    # Users, devices, preferences -------------------------------------------------------------
    async def put_user(self, user: User) -> User: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, User]: ...

    async def delete_user(self, user_id: str) -> bool:
        """Erase the user's personal data: profile, devices, preferences, inbox contents."""
        ...

    async def add_device(self, device: Device) -> Device: ...

    async def remove_device(self, user_id: str, device_id: str) -> bool: ...

    async def list_devices(self, user_ids: Sequence[str], *, active_only: bool = True) -> list[Device]: ...

    async def get_preferences(self, user_id: str) -> Preferences | None: ...

    async def get_preferences_many(self, user_ids: Sequence[str]) -> dict[str, Preferences]: ...

    async def put_preferences(self, prefs: Preferences) -> None: ...

    async def existing_topics(self, keys: Sequence[str]) -> set[str]: ...

    async def import_users(
        self, items: Sequence[UserImport], *, now: float, checkpoint: tuple[str, str] | None = None
    ) -> None:
        """Upsert users with their devices (matched on kind and token), preferences (replaced)
        and topic subscriptions (added), and the ``checkpoint`` setting, in one transaction."""
        ...

    # Templates ----------------------------------------------------------------------------------
    async def put_template(self, template: Template) -> Template:
        """Store a new version (the stored ``version`` is one more than the latest)."""
        ...

    async def get_template(self, name: str, version: int | None = None) -> Template | None: ...

    async def delete_template(self, name: str) -> bool: ...

    # Idempotency ----------------------------------------------------------------------------------
    async def get_idempotent(self, scope: str, key: str, *, now: float) -> IdempotencyRecord | None:
        """The live (not expired) record of ``key``, written by a committed request."""
        ...

    # Notifications -----------------------------------------------------------------------------
    async def create_notifications(
        self,
        notifications: Sequence[Notification],
        *,
        idempotency: Sequence[IdempotencyClaim] = (),
        events: Sequence[EventRecord] = (),
    ) -> None:
        """Commit notifications (status accepted), the ``idempotency`` keys of the requests
        that made them, and the ``events`` they were made from, in one transaction. A key that
        another request already holds (live) raises :class:`IdempotencyKeyTaken` with that
        request's record, and nothing is committed."""
        ...

    async def get_notification(self, notification_id: str) -> Notification | None: ...

    async def list_notifications(self, flt: NotificationFilter) -> list[Notification]: ...

    async def notifications_in_progress(self, notification_ids: Sequence[str]) -> set[str]:
        """Those of ``notification_ids`` with a delivery that is not final yet."""
        ...

    async def claim_unrouted(
        self, *, owner: str, limit: int, lease: float, now: float, min_rank: int = 0
    ) -> list[Notification]:
        """Lease accepted notifications (or ones whose routing lease expired) for routing;
        new ones of priority rank ``min_rank`` or lower only (a bulk worker leaves critical and
        high to the routers of the processes that send them)."""
        ...

    async def save_routed(self, batch: RoutedBatch, *, owner: str, now: float, lease: float = 60.0) -> bool:
        """Insert deliveries (ignoring ones that already exist), advance routing progress and
        renew the routing lease for ``lease`` seconds.

        Returns False when ``owner`` no longer holds the routing lease.
        """
        ...

    async def save_routed_many(
        self,
        batches: Sequence[RoutedBatch],
        *,
        owner: str,
        now: float,
        lease: float = 60.0,
        claim: RoutedClaim | None = None,
    ) -> list[bool]:
        """:meth:`save_routed` for several notifications in one transaction.

        With ``claim``, the deliveries it names are inserted already claimed (see
        :class:`RoutedClaim`); those this call inserted so are left with status ``sending``
        in ``batches``, every other one it named with the status it was written with."""
        ...

    async def recipient_context(self, user_ids: Sequence[str], *, with_devices: bool) -> RecipientContext:
        """Users, their preferences, active devices (when asked) and suppressed addresses."""
        ...

    async def fail_routing(self, notification_id: str, error: str, *, now: float) -> None: ...

    async def cancel_notification(self, notification_id: str, *, now: float) -> tuple[int, int]:
        """Cancel every delivery not yet handed to a worker (pending, scheduled, queued,
        retrying). Returns (cancelled by this call, left unchanged: sent, in flight or final)."""
        ...

    # Deliveries -----------------------------------------------------------------------------------
    async def get_deliveries(
        self,
        notification_id: str,
        *,
        with_attempts: bool = True,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Delivery]:
        """The notification's deliveries in id order: those after ``after``, at most ``limit``."""
        ...

    async def status_counts(self, notification_id: str) -> dict[str, int]:
        """How many of the notification's deliveries are in each status."""
        ...

    async def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    async def record_results(self, results: Sequence[DeliveryResult], *, now: float) -> list[str]:
        """Record attempts and status changes in one transaction.

        A result is applied only while its worker still holds the lease (status ``sending``,
        same owner); the ids of results that were not applied are returned.
        """
        ...

    async def mark_delivery(
        self,
        delivery_id: str,
        status: DeliveryStatus,
        *,
        now: float,
        user_id: str | None = None,
        reason: str | None = None,
    ) -> Delivery:
        """A tracking event (delivered, read) from a client or provider callback; ``reason``
        is kept on the delivery (``bounced``). Counted in the funnel in the same transaction."""
        ...

    async def promote_scheduled(
        self, *, now: float, limit: int | None = None, ranks: Sequence[int] | None = None
    ) -> Promoted:
        """Move scheduled deliveries that are due to queued: every one, or with ``limit`` at most
        that many (highest lane first, then earliest due); ``ranks``: only those lanes."""
        ...

    async def expire_deliveries(self, *, now: float) -> int:
        """Skip (reason expired) every unsent delivery whose expires_at has passed."""
        ...

    async def reclaim_expired_leases(self, *, now: float) -> list[str]:
        """Put deliveries whose worker lost its lease back to retrying (attempt outcome lost);
        return their channels."""
        ...

    async def next_due(self, *, now: float) -> float | None:
        """The earliest future time at which a scheduled or retrying delivery becomes due."""
        ...

    # Dead letters --------------------------------------------------------------------------------
    async def list_dead_letters(self, flt: DeadLetterFilter) -> list[Delivery]:
        """Dead deliveries, newest first, each with every attempt (oldest first)."""
        ...

    async def replay_dead_letters(self, delivery_ids: Sequence[str], *, now: float) -> list[Delivery]:
        """Requeue dead deliveries with a fresh attempt budget, keeping their history."""
        ...

    async def find_delivery(self, provider_message_id: str) -> Delivery | None:
        """The delivery a provider knows by its own message id."""
        ...

    async def first_seen(self, key: str, *, ttl: float, now: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` (durable: callbacks replayed after a
        restart are still recognised)."""
        ...

    # Suppressions (dead addresses) ------------------------------------------------------------
    async def suppress_address(self, channel: str, address: str, reason: str, *, now: float) -> None: ...

    async def suppressed(self, channel: str, addresses: Sequence[str]) -> set[str]: ...

    # Inbox ----------------------------------------------------------------------------------------
    async def list_inbox(
        self, user_id: str, *, unread_only: bool, cursor: str | None, limit: int
    ) -> tuple[list[Delivery], int]:
        """In-app deliveries for the user, newest first, and the unread count."""
        ...

    async def mark_all_read(self, user_id: str, *, now: float) -> int: ...

    # Rules, events, topics ----------------------------------------------------------------------
    async def put_rule(self, rule: Rule, *, now: float) -> None: ...

    async def get_rule(self, event_type: str) -> Rule | None: ...

    async def list_rules(self) -> list[Rule]: ...

    async def delete_rule(self, event_type: str) -> bool: ...

    async def get_event(self, event_id: str) -> EventRecord | None: ...

    async def put_topic(self, topic: Topic) -> Topic: ...

    async def get_topic(self, key: str) -> Topic | None:
        """The topic with its current subscriber count."""
        ...

    async def delete_topic(self, key: str) -> bool: ...

    async def has_topic(self, key: str) -> bool: ...

    async def add_subscribers(self, key: str, user_ids: Sequence[str], *, now: float) -> int: ...

    async def remove_subscribers(self, key: str, user_ids: Sequence[str]) -> int: ...

    async def subscriber_page(self, key: str, *, after: str | None, limit: int) -> list[str]:
        """Subscribers in user id order after ``after`` (fan-out streams through these)."""
        ...

    async def count_subscribers(self, key: str) -> int: ...

    async def fallback_candidates(self, notification_id: str) -> list[Delivery]:
        """Every delivery of the recipients of ``notification_id`` that have a failed or dead one."""
        ...

    # Digests (issue 4; SqlDigestsMixin) -----------------------------------------------------------
    # A held item is a delivery with status ``scheduled`` and reason ``digest``; its due_at is the
    # digest time. promote_scheduled never queues one: only save_digest (or rehold) moves it.
    async def due_digest_groups(self, *, now: float, limit: int) -> list[DigestGroup]:
        """(user, category, channel) groups with held items due at ``now`` (oldest first)."""
        ...

    async def held_digest_items(
        self, user_id: str, category: str, channel: str, *, now: float
    ) -> list[Delivery]:
        """The group's held items that are due and not expired, oldest first."""
        ...

    async def save_digest(self, plan: DigestPlan, *, now: float) -> DigestSaved:
        """In one transaction: insert the digest notification and delivery and mark every item
        ``skipped``/``digested``. ``changed`` (nothing written) when an item is no longer held
        (cancelled, expired or digested meanwhile); ``exists`` (nothing written) when the
        digest notification's id is already taken (that digest went out already)."""
        ...

    async def rehold_digest_items(
        self, delivery_ids: Sequence[str], *, due_at: float | None, now: float
    ) -> int:
        """Move still-held items to a later digest time, or (``due_at`` None) release them as
        ordinary scheduled deliveries due now. Returns how many changed."""
        ...

    # Broker queue: outbox, claims by id (issue 5; SqlOutboxMixin) ---------------------------------
    # With the outbox on (``SqlStore(outbox=True)``, set when queue.url is amqp://), every
    # transaction that makes a delivery claimable (queued or retrying) also writes an outbox row.
    async def claim_outbox(
        self, *, limit: int, now: float, lease: float, ranks: Sequence[int] | None = None
    ) -> list[OutboxItem]:
        """Take up to ``limit`` due outbox rows (highest lane first, then oldest due first) for
        publishing; they are hidden from other relays for ``lease`` seconds (PostgreSQL: SKIP
        LOCKED). ``ranks``: only rows of these priority lanes (None: every lane)."""
        ...

    async def release_outbox(self, items: Sequence[OutboxItem]) -> None:
        """Give rows whose publish failed back, due as before."""
        ...

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        """Forget rows the broker confirmed."""
        ...

    async def outbox_next_due(self, ranks: Sequence[int] | None = None) -> float | None:
        """The earliest due time in the outbox, of the lanes ``ranks`` if given (None when empty)."""
        ...

    async def claim_ids(
        self, delivery_ids: Sequence[str], *, owner: str, lease: float, now: float, early: float = 0.0
    ) -> list[Delivery]:
        """Claim these deliveries (queued or retrying, due by ``now + early``) for ``owner``,
        exactly like a queue claim; others are left alone. A claimable delivery not due yet gets
        a fresh outbox row (its message came early: clock skew, or a stale duplicate)."""
        ...

    async def requeue_ids(self, delivery_ids: Sequence[str], *, due_at: float, now: float) -> int:
        """Write outbox rows due at ``due_at`` for those of these deliveries still claimable."""
        ...

    async def extend_leases(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None:
        """Extend the send lease of ``owner``'s deliveries."""
        ...

    # Named leases (leader election) ------------------------------------------------------------------
    async def acquire_or_renew(self, name: str, owner: str, *, ttl: float, now: float) -> bool:
        """Take lease ``name`` for ``ttl`` seconds if it is free or expired, or renew it if
        ``owner`` holds it. Atomic: of concurrent contenders exactly one wins."""
        ...

    async def get_lease(self, name: str) -> NamedLease | None: ...

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up (a graceful stop): the next contender takes it at once."""
        ...

    # Stats and metrics ------------------------------------------------------------------------------
    async def delivery_counts(self, *, since: float | None = None) -> list[tuple[str, str, str | None, int]]:
        """(channel, status, provider, count)."""
        ...

    async def queue_depth(self) -> list[tuple[str, int, int]]:
        """(channel, priority rank, count) of deliveries waiting to be sent."""
        ...

    async def ambiguous_count(self) -> int: ...

    async def record_engagement(self, event: EngagementEvent) -> Engagement | None:
        """Record an open or click (None: no such delivery), idempotently: a delivery's first
        open and first click per link are recorded, repeats bump a count. Counted in the funnel
        and, for a human event, the delivery moved to ``read``, in one transaction."""
        ...

    async def list_engagement(self, delivery_id: str) -> list[dict[str, object]]:
        """The delivery's recorded opens and clicks, oldest first."""
        ...

    async def funnel_counts(self, q: FunnelQuery) -> list[tuple[Any, ...]]:
        """Rows of (*dimensions in ``q.by``, bucket start or None, metric, count), summed from
        the rollups (see :mod:`herald.domain.funnel`)."""
        ...

    async def queue_ages(self, *, now: float) -> list[tuple[str, int, int, float]]:
        """(channel, priority rank, waiting count, age in seconds of the oldest one due)."""
        ...

    async def oldest_unrouted(self) -> float | None:
        """When the oldest accepted notification not yet routed was accepted (None: none)."""
        ...

    async def maintain(self) -> list[str]:
        """Housekeeping the database may not do in time by itself: on PostgreSQL, vacuum and
        analyse the queue tables where many rows died. Returns the tables cleaned."""
        ...


@dataclass(slots=True)
class Claim:
    delivery: Delivery
    owner: str


class Queue(Protocol):
    """Per-channel work queues with priority lanes.

    ``claim`` hands out deliveries due now, highest lane first, under a lease held by
    ``owner``; concurrent claimers (in any process) never get the same delivery. A claimed
    delivery is not handed out again while its lease runs; once the lease has expired,
    ``Store.reclaim_expired_leases`` records the ambiguous ``lost`` attempt and makes it
    claimable again.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(
        self,
        channel: str,
        *,
        owner: str,
        limit: int,
        max_rank: int,
        lease: float,
        now: float,
        min_rank: int = 0,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries with ``min_rank`` <= priority rank <= ``max_rank``
        (a sender of some lanes only never takes, nor holds back, those of the others)."""
        ...

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None: ...

    def wake(self, channel: str | None = None, top_rank: int = 0) -> None:
        """Signal that ``channel`` (or every channel) may have new work; ``top_rank``: its
        highest lane when known (0, critical, when not), so that this process's waiters of
        higher lanes only sleep on (other processes are woken for the channel)."""
        ...

    def wake_local(self, channel: str) -> None:
        """Wake this process's waiters of ``channel`` only (a send slot came free): not other
        processes, not the wake listeners."""
        ...

    def hand_over(self, deliveries: Sequence[Delivery]) -> None:
        """Critical/high deliveries this process just made claimable (committed). A queue that
        can let this process's own senders of their lanes claim them at once, without waiting
        for the broker's round trip, does so; whatever the broker brings later for them finds
        them claimed. Others do nothing (:meth:`wake` is called as well)."""
        ...

    def add_wake_listener(self, listener: Callable[[str | None], None]) -> None:
        """Also call ``listener`` with the channel of every :meth:`wake` of this process."""
        ...

    async def wait(self, channel: str, timeout: float, max_rank: int = 3) -> None:
        """Return when woken for ``channel`` (work in a lane up to ``max_rank``) or after
        ``timeout`` seconds."""
        ...


@runtime_checkable
class RouterWakeups(Protocol):
    """A queue that also wakes the routers of other processes (PostgreSQL ``NOTIFY``): what a
    process without a router (``herald api``) accepted is routed at once, not at the routers'
    next poll."""

    def wake_routers(self, urgent: bool) -> None:
        """New notifications to route; ``urgent``: a critical one among them."""
        ...

    def add_route_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(urgent)`` when another process wakes the routers."""
        ...


class Cache(Protocol):
    """Dedup keys and rate-limit counters shared by every process."""

    async def add_if_absent(self, key: str, ttl: float) -> bool:
        """Set ``key`` for ``ttl`` seconds unless present; True when this call set it."""
        ...

    async def delete(self, key: str) -> None: ...

    async def hit_window(self, key: str, *, limit: int, window: float, now: float) -> bool:
        """Count one event in a sliding window; False (and nothing counted) when over ``limit``."""
        ...

    async def ping(self) -> None:
        """Raise ServiceUnavailable when the cache cannot answer."""
        ...

    async def close(self) -> None: ...


class Provider(Protocol):
    """A delivery provider speaking its real wire protocol.

    ``send`` returns a receipt on acceptance and raises a subclass of
    :class:`herald.domain.errors.DeliveryError` otherwise; the class decides retry, failure,
    address deactivation or a configuration alert.
    """

    name: str

    async def send(self, message: OutboundMessage) -> SendReceipt: ...

    async def close(self) -> None: ...


@runtime_checkable
class BatchProvider(Protocol):
    """A provider that sends one content to many recipients in one call (SendGrid's
    personalizations): a broadcast whose deliveries rendered to the same content goes out at the
    provider's speed, each delivery still with its own outcome, receipt and callbacks.

    ``batch_key`` says what must be equal for two messages to share a call (None: this one
    cannot be batched). ``send_batch`` returns one outcome per message, in order: a receipt, or
    the :class:`herald.domain.errors.DeliveryError` that message's delivery gets (the provider
    isolates a refusal that concerns one recipient, e.g. by sending the batch one by one).
    """

    name: str
    batch_limit: int

    def batch_key(self, message: OutboundMessage) -> Hashable | None: ...

    async def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendReceipt | Exception]: ...


@runtime_checkable
class CallbackReceiver(Protocol):
    """A provider that takes status callbacks (``POST /v1/webhooks/{provider}``).

    ``parse_callback`` verifies the request with the provider's own scheme (the signature is the
    authentication) and returns what it says in herald's terms. It raises
    :class:`herald.domain.errors.PermissionDenied` for a forged, unsigned or stale request,
    :class:`herald.domain.errors.MalformedRequest` for a body it cannot read, and
    :class:`herald.domain.errors.ProviderConfigError` when herald lacks what is needed to verify.
    ``public_base`` is herald's public URL, for providers that sign the URL they called.
    """

    name: str

    def parse_callback(self, request: CallbackRequest, *, public_base: str) -> list[CallbackEvent]: ...


class InboxPublisher(Protocol):
    """Fan-out of new in-app items to live inbox streams.

    ``publish`` returns once the item has its place in the user's durable feed (so a stream
    that reconnects later replays it) and the streams of every process have been told.
    """

    async def publish(self, user_id: str, item: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class InboxEntry:
    seq: int  # the item's number in its user's feed: the stream's event id
    delivery: Delivery


class InboxFeed(Protocol):
    """The durable order of live inbox items, numbered per user (issue 19).

    Numbers are given in commit order per user: once a reader saw number ``n``, no item with a
    lower number can appear later, so ``after(user, n)`` is a complete resume.
    """

    async def append(self, items: Sequence[tuple[str, str]], *, now: float) -> dict[str, int]:
        """Number each ``(user_id, delivery_id)``; an item appended again keeps its number."""
        ...

    async def head(self, user_id: str) -> int:
        """The user's last number (0: nothing yet)."""
        ...

    async def after(self, user_id: str, seq: int, *, limit: int) -> tuple[list[InboxEntry], int]:
        """The user's items numbered above ``seq`` in order, and the user's unread count."""
        ...


class LiveSignals(Protocol):
    """Wake-ups of live streams across processes: "user X has news". Best effort: streams
    read what changed from the database (:class:`InboxFeed`) and also look on their own every
    heartbeat, so a lost signal costs latency, never an item."""

    async def start(self) -> None: ...

    def notify(self, user_id: str) -> None:
        """Wake the streams of ``user_id`` in every process (this one included)."""
        ...

    def on_wake(self, callback: Callable[[str | None], None]) -> None:
        """Call ``callback(user_id)`` for every wake-up (``None``: everyone, after a gap)."""
        ...

    async def close(self) -> None: ...
