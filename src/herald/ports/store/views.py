"""Each service's view of the store: exactly the roles it uses, so that mypy proves it uses
nothing else. A service of one role names the role itself (``DeliveryService``: ResultsStore,
``SchedulerService``: TimerStore, ``LeaderLease``: LeaseStore, ``EventService``: EventStore,
``StatsService``: InsightStore, ``NotificationWriter``: AcceptStore); these are the services
that need several. Widening a view is a deliberate, reviewed change of what a service may do.
"""

from __future__ import annotations

from typing import Protocol

from herald.ports.store.digests import DigestStore
from herald.ports.store.directory import (
    KeyStore,
    RecipientStore,
    SuppressionStore,
    TemplateStore,
    TopicStore,
    UserStore,
)
from herald.ports.store.events import EventStore
from herald.ports.store.insight import InsightStore
from herald.ports.store.lifecycle import StoreLifecycle
from herald.ports.store.results import DeadLetterStore, InboxStore, TrackingStore
from herald.ports.store.routing import AcceptStore, NotificationStore, RoutingStore


class LookupsStore(KeyStore, TemplateStore, UserStore, Protocol):
    """``services.lookups.Lookups``: API keys, templates and which users exist, cached."""


class AcceptServiceStore(AcceptStore, LookupsStore, TopicStore, Protocol):
    """``services.accept.AcceptService``: idempotency and the durable accept, the lookups it
    builds when given none, and whether a topic exists."""


class RouterServiceStore(RoutingStore, RecipientStore, SuppressionStore, TemplateStore, TopicStore, Protocol):
    """``services.route.RouterService``: the routing lease and writes, recipients and their
    suppressed addresses, templates, and topic fan-out."""


class DigestServiceStore(DigestStore, RecipientStore, TemplateStore, Protocol):
    """``services.digest.DigestService``: held items and digests, the recipient, its template."""


class TrackServiceStore(TrackingStore, SuppressionStore, NotificationStore, Protocol):
    """``services.track.TrackService``: callbacks, opens and clicks, suppressing dead
    addresses, and reading the delivery they concern."""


class ConsoleServiceStore(
    NotificationStore,
    DeadLetterStore,
    TemplateStore,
    UserStore,
    InboxStore,
    EventStore,
    TrackingStore,
    Protocol,
):
    """``services.console.ConsoleService``: the console's writes and single-record reads (its
    listings come from :class:`herald.ports.console.ConsoleReads`)."""


class UserImportStore(UserStore, TopicStore, Protocol):
    """``services.user_import``: bulk upserts of users, and which topics exist."""


class DeadLetterServiceStore(DeadLetterStore, NotificationStore, Protocol):
    """``services.dead_letters.DeadLetterService``: dead letters listed and replayed, and the
    delivery a replay names."""


class NotificationServiceStore(NotificationStore, TrackingStore, InboxStore, EventStore, Protocol):
    """``services.notifications.NotificationService``: notifications and their deliveries,
    marks and engagement, the inbox, and event records."""


class CatalogServiceStore(TemplateStore, EventStore, UserStore, Protocol):
    """``services.routing_catalog.RoutingCatalog``: templates and routing rules (and the user a
    trial render names)."""


class StatsServiceStore(InsightStore, StoreLifecycle, Protocol):
    """``services.stats.StatsService``: counts, the funnel, and whether the database answers."""
