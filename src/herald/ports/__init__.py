"""The contracts between services and adapters.

Every backend implements one of these protocols and passes the same contract suite in
``tests/contract``. Arguments and results are domain types; adapters translate driver errors
into :class:`herald.domain.errors.ServiceUnavailable` at the boundary.

One module per port: :mod:`~herald.ports.store` (the status log, split into role protocols;
each service declares the roles it uses), :mod:`~herald.ports.queue`,
:mod:`~herald.ports.cache`, :mod:`~herald.ports.providers`, :mod:`~herald.ports.inbox`,
:mod:`~herald.ports.console` (the console's read model) and :mod:`~herald.ports.clock`;
:mod:`~herald.ports.records` holds the dataclasses the store's roles take and return. Every
name is re-exported here: ``from herald.ports import Store``.
"""

from __future__ import annotations

from herald.ports.cache import Cache
from herald.ports.clock import Clock
from herald.ports.console import BucketCount, ConsoleReads, SearchQuery
from herald.ports.inbox import InboxEntry, InboxFeed, InboxPublisher, LiveSignals
from herald.ports.providers import BatchProvider, CallbackReceiver, Provider
from herald.ports.queue import Claim, Queue, RouterWakeups
from herald.ports.records import (
    DeadLetterFilter,
    DigestGroup,
    DigestPlan,
    DigestSaved,
    Engagement,
    EngagementEvent,
    FunnelQuery,
    IdempotencyClaim,
    IdempotencyRecord,
    NamedLease,
    NotificationFilter,
    OutboxItem,
    Promoted,
    RecipientContext,
    RoutedBatch,
    RoutedClaim,
    UserImport,
)
from herald.ports.store import (
    ROLES,
    AcceptServiceStore,
    AcceptStore,
    BrokerClaimStore,
    ConsoleServiceStore,
    DeadLetterStore,
    DigestServiceStore,
    DigestStore,
    DirectoryStore,
    EventStore,
    InboxStore,
    InsightStore,
    KeyStore,
    LeaseStore,
    LookupsStore,
    NotificationStore,
    OutboxStore,
    RecipientStore,
    ResultsStore,
    RouterServiceStore,
    Store,
    StoreLifecycle,
    SuppressionStore,
    TemplateStore,
    TimerStore,
    TopicStore,
    TrackingStore,
    TrackServiceStore,
    UserImportStore,
    UserStore,
)

__all__ = [
    "ROLES",
    "AcceptServiceStore",
    "AcceptStore",
    "BatchProvider",
    "BrokerClaimStore",
    "BucketCount",
    "Cache",
    "CallbackReceiver",
    "Claim",
    "Clock",
    "ConsoleReads",
    "ConsoleServiceStore",
    "DeadLetterFilter",
    "DeadLetterStore",
    "DigestGroup",
    "DigestPlan",
    "DigestSaved",
    "DigestServiceStore",
    "DigestStore",
    "DirectoryStore",
    "Engagement",
    "EngagementEvent",
    "EventStore",
    "FunnelQuery",
    "IdempotencyClaim",
    "IdempotencyRecord",
    "InboxEntry",
    "InboxFeed",
    "InboxPublisher",
    "InboxStore",
    "InsightStore",
    "KeyStore",
    "LeaseStore",
    "LiveSignals",
    "LookupsStore",
    "NamedLease",
    "NotificationFilter",
    "NotificationStore",
    "OutboxItem",
    "OutboxStore",
    "Promoted",
    "Provider",
    "Queue",
    "RecipientContext",
    "RecipientStore",
    "ResultsStore",
    "RoutedBatch",
    "RoutedClaim",
    "RouterServiceStore",
    "RouterWakeups",
    "SearchQuery",
    "Store",
    "StoreLifecycle",
    "SuppressionStore",
    "TemplateStore",
    "TimerStore",
    "TopicStore",
    "TrackServiceStore",
    "TrackingStore",
    "UserImport",
    "UserImportStore",
    "UserStore",
]
