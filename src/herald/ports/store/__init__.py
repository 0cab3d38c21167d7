"""The store's port, split by role.

The store is the status log, the one source of truth for what happened. Each role protocol
here is a small, documented slice of it; a service declares the roles it uses (see
:mod:`herald.ports.store.views`), and :class:`Store` is every role at once, what an adapter
(``SqlStore``) implements and the composition root builds.

Every method is one transaction. Methods that change a delivery's status only do so from the
statuses the state machine allows and report how many rows changed.
"""

from __future__ import annotations

from typing import Protocol

from herald.ports.store.digests import DigestStore
from herald.ports.store.directory import (
    DirectoryStore,
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
from herald.ports.store.outbox import BrokerClaimStore, LeaseStore, OutboxStore
from herald.ports.store.results import (
    DeadLetterStore,
    InboxStore,
    ResultsStore,
    TimerStore,
    TrackingStore,
)
from herald.ports.store.routing import AcceptStore, NotificationStore, RoutingStore
from herald.ports.store.views import (
    AcceptServiceStore,
    CatalogServiceStore,
    ConsoleServiceStore,
    DeadLetterServiceStore,
    DigestServiceStore,
    LookupsStore,
    NotificationServiceStore,
    RouterServiceStore,
    StatsServiceStore,
    TrackServiceStore,
    UserImportStore,
)


class Store(
    StoreLifecycle,
    DirectoryStore,
    AcceptStore,
    RoutingStore,
    NotificationStore,
    ResultsStore,
    TrackingStore,
    TimerStore,
    DeadLetterStore,
    InboxStore,
    EventStore,
    DigestStore,
    OutboxStore,
    BrokerClaimStore,
    LeaseStore,
    InsightStore,
    Protocol,
):
    """The status log: every role at once (what ``SqlStore`` implements).

    Every method is one transaction. Methods that change a delivery's status only do so from
    the statuses the state machine allows and report how many rows changed. Services take the
    roles they use instead (:mod:`herald.ports.store.views`); the composition root builds the
    whole, and the queue adapters, the metrics and the entrypoints still take it.
    """


ROLES: tuple[type, ...] = (
    StoreLifecycle,
    KeyStore,
    UserStore,
    TemplateStore,
    TopicStore,
    RecipientStore,
    SuppressionStore,
    AcceptStore,
    RoutingStore,
    NotificationStore,
    ResultsStore,
    TrackingStore,
    TimerStore,
    DeadLetterStore,
    InboxStore,
    EventStore,
    DigestStore,
    OutboxStore,
    BrokerClaimStore,
    LeaseStore,
    InsightStore,
)
"""The role protocols, each once (the composites above are unions of these)."""

__all__ = [
    "ROLES",
    "AcceptServiceStore",
    "AcceptStore",
    "BrokerClaimStore",
    "CatalogServiceStore",
    "ConsoleServiceStore",
    "DeadLetterServiceStore",
    "DeadLetterStore",
    "DigestServiceStore",
    "DigestStore",
    "DirectoryStore",
    "EventStore",
    "InboxStore",
    "InsightStore",
    "KeyStore",
    "LeaseStore",
    "LookupsStore",
    "NotificationServiceStore",
    "NotificationStore",
    "OutboxStore",
    "RecipientStore",
    "ResultsStore",
    "RouterServiceStore",
    "StatsServiceStore",
    "Store",
    "StoreLifecycle",
    "SuppressionStore",
    "TemplateStore",
    "TimerStore",
    "TopicStore",
    "TrackServiceStore",
    "TrackingStore",
    "UserImportStore",
    "UserStore",
]
