"""The contracts between services and adapters.

Every backend implements one of these protocols and passes the same contract suite in
``tests/contract``. Arguments and results are domain types; adapters translate driver errors
into :class:`herald.domain.errors.ServiceUnavailable` at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from herald.domain.models import (
    JSON,
    ApiKey,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    Device,
    Notification,
    OutboundMessage,
    Preferences,
    SendReceipt,
    Template,
    User,
)


class Clock(Protocol):
    """Wall-clock time. Tests substitute a clock they can move."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...


@dataclass(slots=True)
class IdempotencyRecord:
    request_hash: str
    state: str  # "pending" while the first request is being accepted, then "done"
    status_code: int | None = None
    response: JSON | None = None


@dataclass(slots=True)
class NotificationFilter:
    user_id: str | None = None
    status: str | None = None
    channel: str | None = None
    since: float | None = None
    until: float | None = None
    cursor: str | None = None
    limit: int = 50


@dataclass(slots=True)
class DeadLetterFilter:
    channel: str | None = None
    provider: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None
    cursor: str | None = None
    limit: int = 100


@dataclass(slots=True)
class RoutedBatch:
    """What the router writes for one chunk of recipients, in one transaction."""

    notification_id: str
    deliveries: list[Delivery]
    recipients_done: int
    finished: bool
    recipients_total: int | None = None
    dedup_key: str | None = None
    dedup_window: float = 86_400.0


@dataclass(slots=True)
class RecipientContext:
    """Everything routing needs to know of a set of stored users, read in one go."""

    users: dict[str, User]
    preferences: dict[str, Preferences]
    devices: dict[str, list[Device]]
    suppressed: dict[str, set[str]]  # channel -> addresses of these users that are suppressed


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

    # Templates ----------------------------------------------------------------------------------
    async def put_template(self, template: Template) -> Template:
        """Store a new version (the stored ``version`` is one more than the latest)."""
        ...

    async def get_template(self, name: str, version: int | None = None) -> Template | None: ...

    async def delete_template(self, name: str) -> bool: ...

    # Idempotency ----------------------------------------------------------------------------------
    async def begin_idempotent(
        self, scope: str, key: str, request_hash: str, *, now: float, ttl: float
    ) -> IdempotencyRecord | None:
        """Reserve ``key`` for this request; return the existing record if one is live."""
        ...

    async def finish_idempotent(self, scope: str, key: str, status_code: int, response: JSON) -> None: ...

    async def abandon_idempotent(self, scope: str, key: str) -> None: ...

    # Notifications -----------------------------------------------------------------------------
    async def create_notifications(
        self, notifications: Sequence[Notification], *, idempotency: Sequence[tuple[str, str, int, JSON]] = ()
    ) -> None:
        """Commit notifications (status accepted); with ``idempotency`` (scope, key, code,
        response) the key's record is completed in the same transaction."""
        ...

    async def get_notification(self, notification_id: str) -> Notification | None: ...

    async def list_notifications(self, flt: NotificationFilter) -> list[Notification]: ...

    async def claim_unrouted(self, *, owner: str, limit: int, lease: float, now: float) -> list[Notification]:
        """Lease accepted notifications (or ones whose routing lease expired) for routing."""
        ...

    async def save_routed(self, batch: RoutedBatch, *, owner: str, now: float, lease: float = 60.0) -> bool:
        """Insert deliveries (ignoring ones that already exist), advance routing progress and
        renew the routing lease for ``lease`` seconds.

        Returns False when ``owner`` no longer holds the routing lease.
        """
        ...

    async def save_routed_many(
        self, batches: Sequence[RoutedBatch], *, owner: str, now: float, lease: float = 60.0
    ) -> list[bool]:
        """:meth:`save_routed` for several notifications in one transaction."""
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
    async def get_deliveries(self, notification_id: str, *, with_attempts: bool = True) -> list[Delivery]: ...

    async def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    async def record_results(self, results: Sequence[DeliveryResult], *, now: float) -> list[str]:
        """Record attempts and status changes in one transaction.

        A result is applied only while its worker still holds the lease (status ``sending``,
        same owner); the ids of results that were not applied are returned.
        """
        ...

    async def mark_delivery(
        self, delivery_id: str, status: DeliveryStatus, *, now: float, user_id: str | None = None
    ) -> Delivery:
        """A tracking event (delivered, read) from a client or provider callback."""
        ...

    async def promote_scheduled(self, *, now: float) -> list[str]:
        """Move scheduled deliveries that are due to queued; return their channels."""
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
    async def list_dead_letters(self, flt: DeadLetterFilter) -> list[Delivery]: ...

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

    # Stats and metrics ------------------------------------------------------------------------------
    async def delivery_counts(self, *, since: float | None = None) -> list[tuple[str, str, str | None, int]]:
        """(channel, status, provider, count)."""
        ...

    async def queue_depth(self) -> list[tuple[str, int, int]]:
        """(channel, priority rank, count) of deliveries waiting to be sent."""
        ...

    async def ambiguous_count(self) -> int: ...


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
        self, channel: str, *, owner: str, limit: int, max_rank: int, lease: float, now: float
    ) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries with priority rank <= ``max_rank``."""
        ...

    async def extend(self, delivery_ids: Sequence[str], *, owner: str, until: float) -> None: ...

    def wake(self, channel: str | None = None) -> None:
        """Signal that ``channel`` (or every channel) may have new work."""
        ...

    async def wait(self, channel: str, timeout: float) -> None:
        """Return when woken for ``channel`` or after ``timeout`` seconds."""
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


class InboxPublisher(Protocol):
    """Fan-out of new in-app items to live inbox streams."""

    def publish(self, user_id: str, item: dict[str, Any]) -> None: ...
