"""The roles of the store after routing: senders' results, tracking (provider callbacks, opens
and clicks), the scheduler's sweeps, dead letters and the inbox.

Every method is one transaction (all or nothing). A delivery's status changes only along the
state machine (:mod:`herald.domain.states`), and the funnel's counts
(:mod:`herald.domain.funnel`) change in the same transaction as the status they count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from herald.domain.models import Delivery, DeliveryResult, DeliveryStatus
from herald.ports.records import DeadLetterFilter, Engagement, EngagementEvent, Promoted


class ResultsStore(Protocol):
    """What senders write: the outcome of each send."""

    async def record_results(self, results: Sequence[DeliveryResult], *, now: float) -> list[str]:
        """Record attempts and status changes in one transaction.

        A result is applied only while its worker still holds the lease (status ``sending``,
        same owner); the ids of results that were not applied are returned.

        Applying one writes the new status (with its reason, the provider's message id when
        sent, the next due time when retrying), appends its attempt, writes an outbox row when
        it is claimable again and the store feeds a broker, hands the notification back to the
        router when a fallback delivery failed or died, suppresses a ``dead_address`` (push: its
        devices are deactivated) and counts the funnel. A result for a delivery given twice in
        one call counts once (the first; the others are returned). Raises IllegalTransition
        (nothing written) when a result's status cannot follow ``sending``."""
        ...


class TrackingStore(Protocol):
    """What happens to a delivery after it was sent: status callbacks, opens and clicks."""

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
        is kept on the delivery (``bounced``). Counted in the funnel in the same transaction.

        Returns the delivery after the change (without attempts). Idempotent: the status it
        already has, or ``delivered`` once ``read``, changes nothing. Stamps the time of the
        status (a read also stamps delivered when missing); a fallback delivery marked
        ``failed`` hands its notification back to the router. Raises NotFound (no such delivery,
        or not ``user_id``'s when given) and IllegalTransition (the state machine forbids it,
        or the delivery changed concurrently: try again)."""
        ...

    async def find_delivery(self, provider_message_id: str) -> Delivery | None:
        """The delivery a provider knows by its own message id."""
        ...

    async def first_seen(self, key: str, *, ttl: float, now: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` (durable: callbacks replayed after a
        restart are still recognised). Atomic: of concurrent callers with one key, one gets
        True; once ``ttl`` has passed the key counts as new again."""
        ...

    async def record_engagement(self, event: EngagementEvent) -> Engagement | None:
        """Record an open or click (None: no such delivery), idempotently: a delivery's first
        open and first click per link are recorded, repeats bump a count. Counted in the funnel
        and, for a human event, the delivery moved to ``read``, in one transaction."""
        ...

    async def list_engagement(self, delivery_id: str) -> list[dict[str, object]]:
        """The delivery's recorded opens and clicks, oldest first: each with ``event``, ``at``,
        ``last_at``, ``count``, ``machine``, ``why``, ``link``, ``url`` and ``source``."""
        ...


class TimerStore(Protocol):
    """The scheduler's sweeps: due schedules, expiry, lost leases, its next wake-up, and the
    database's housekeeping. Safe to run from several processes at once, though one scheduler
    (the leader) runs them."""

    async def promote_scheduled(
        self, *, now: float, limit: int | None = None, ranks: Sequence[int] | None = None
    ) -> Promoted:
        """Move scheduled deliveries that are due to queued: every one, or with ``limit`` at most
        that many (highest lane first, then earliest due); ``ranks``: only those lanes.

        Items held for a digest are never moved (only the digest step moves those). Each moved
        delivery gets its outbox row when the store feeds a broker. Returns the channels that
        got work and how many moved."""
        ...

    async def expire_deliveries(self, *, now: float) -> int:
        """Skip (reason expired) every unsent delivery whose expires_at has passed.

        Unsent: waiting (scheduled, queued, retrying), not in flight. Counted in the funnel;
        returns how many were skipped."""
        ...

    async def reclaim_expired_leases(self, *, now: float) -> list[str]:
        """Put deliveries whose worker lost its lease back to retrying (attempt outcome lost);
        return their channels.

        Each is due at once, its retry count and attempt budget grow by one, and the ambiguous
        ``lost`` attempt says the provider may have the message. Channels sorted, each once."""
        ...

    async def next_due(self, *, now: float) -> float | None:
        """The earliest future time at which a scheduled or retrying delivery becomes due.

        Or a send lease runs out, if earlier (the scheduler reclaims it then); None when
        nothing is waiting."""
        ...

    async def maintain(self) -> list[str]:
        """Housekeeping the database may not do in time by itself: on PostgreSQL, vacuum and
        analyse the queue tables where many rows died. Returns the tables cleaned."""
        ...


class DeadLetterStore(Protocol):
    """Deliveries that died (attempt budget spent, or a permanent error): listing, replaying."""

    async def list_dead_letters(self, flt: DeadLetterFilter) -> list[Delivery]:
        """Dead deliveries, newest first, each with every attempt (oldest first).

        Only those matching every given field of ``flt``, below ``flt.cursor``, at most
        ``flt.limit``."""
        ...

    async def replay_dead_letters(self, delivery_ids: Sequence[str], *, now: float) -> list[Delivery]:
        """Requeue dead deliveries with a fresh attempt budget, keeping their history.

        Those of ``delivery_ids`` still dead become ``queued`` due now (reason cleared), with
        their outbox row when the store feeds a broker; the others are left alone. Returns the
        requeued ones (without attempts): a repeat returns []. Senders are not woken here."""
        ...


class InboxStore(Protocol):
    """The in-app inbox: in-app deliveries are its items."""

    async def list_inbox(
        self, user_id: str, *, unread_only: bool, cursor: str | None, limit: int
    ) -> tuple[list[Delivery], int]:
        """In-app deliveries for the user, newest first, and the unread count.

        Items: sent, delivered or read (``unread_only``: not read), below ``cursor`` (the last
        id of the page before), at most ``limit``, without attempts."""
        ...

    async def mark_all_read(self, user_id: str, *, now: float) -> int:
        """Mark every unread (sent or delivered) in-app delivery of the user read, counted as
        opened in the funnel; returns how many changed (0 on a repeat)."""
        ...
