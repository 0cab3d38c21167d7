"""Tables of the status log. Portable SQL: the same schema runs on SQLite and PostgreSQL.

Timestamps are epoch seconds (double precision); JSON documents are text written with orjson,
so both engines store and compare them the same way. Changes to these tables come with an
alembic revision under ``migrations/versions``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("last_used_at", Float),  # written at most once a minute per key and process
)

settings = Table(
    "settings",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("email", String(320)),
    Column("phone", String(20)),
    Column("locale", String(35)),
    Column("timezone", String(64)),
    Column("data", Text, nullable=False),
    Column("webhook_url", Text),
    Column("chat", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("token", Text, nullable=False),
    Column("data", Text, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("deactivated_at", Float),
    Index("ix_devices_user", "user_id"),
    Index("ix_devices_token", "kind", "token"),
)

# The seed's table: one row per (user, channel); category '*' is the channel switch itself.
user_preferences = Table(
    "user_preferences",
    metadata,
    Column("user_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("category", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    PrimaryKeyConstraint("user_id", "channel", "category"),
)

user_settings = Table(
    "user_settings",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("quiet_hours", Text),
    Column("digests", Text, nullable=False),
)

templates = Table(
    "templates",
    metadata,
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("category", String(64)),
    Column("channels", Text, nullable=False),
    Column("locales", Text, nullable=False),
    Column("default_locale", String(35), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("name", "version"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(40), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(10), nullable=False),
    Column("status_code", Integer),
    Column("response", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    PrimaryKeyConstraint("scope", "key"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("user_id", String(128)),  # the first recipient, for filtering
    Column("type", String(128)),  # template name or event type
    Column("channel", String(16)),  # set when the request named exactly one channel
    Column("content", Text, nullable=False),  # recipients, inline content, data, channels
    Column("template", String(128)),
    Column("template_version", Integer),
    Column("category", String(64), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("send_at", Float),
    Column("expires_at", Float),
    Column("dedup_key", String(255)),
    Column("api_key_id", String(40)),
    Column("topic", String(128)),
    Column("recipients_total", Integer, nullable=False),
    Column("recipients_routed", Integer, nullable=False),
    Column("route_cursor", String(128)),  # topic fan-out: the last subscriber routed
    Column("error", Text),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),
    Column("created_at", Float, nullable=False),
    Column("routed_at", Float),
    Index("ix_notifications_route", "status", "priority", "created_at"),
    Index("ix_notifications_user", "user_id", "id"),
    # The console's search by template and its topic broadcasts (migration 0008).
    Index("ix_notifications_template", "template", "id"),
    Index(
        "ix_notifications_topic",
        "topic",
        "id",
        sqlite_where=text("topic IS NOT NULL"),
        postgresql_where=text("topic IS NOT NULL"),
    ),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("notification_id", String(40), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(64)),
    Column("priority", Integer, nullable=False),
    Column("category", String(64), nullable=False),
    Column("address", Text),
    Column("content", Text, nullable=False),
    Column("provider", String(32)),
    Column("retry_count", Integer, nullable=False),  # attempts made so far
    Column("budget_used", Integer, nullable=False),  # attempts counted against the retry schedule
    Column("due_at", Float, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),
    Column("expires_at", Float),
    Column("provider_message_id", String(255)),
    Column("created_at", Float, nullable=False),
    Column("queued_at", Float),
    Column("sending_at", Float),
    Column("sent_at", Float),
    Column("delivered_at", Float),
    Column("read_at", Float),
    Column("failed_at", Float),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("notification_id", "user_id", "channel", name="uq_deliveries_recipient"),
    # Claims: equality on channel, status, priority, then a range on due_at, in index order.
    Index("ix_deliveries_claim", "channel", "status", "priority", "due_at"),
    Index("ix_deliveries_lease", "status", "lease_until"),
    Index("ix_deliveries_user", "user_id", "channel", "id"),
    # Lookups by notification use uq_deliveries_recipient, which leads with notification_id (a
    # separate index cost one more write per row version: routed, claimed, result).
    # Provider callbacks look deliveries up by the provider's id, set by the result only.
    Index(
        "ix_deliveries_provider_msg",
        "provider_message_id",
        sqlite_where=text("provider_message_id IS NOT NULL"),
        postgresql_where=text("provider_message_id IS NOT NULL"),
    ),
    # The scheduler's promotion and its next wake-up read only scheduled deliveries, by due time:
    # with a released backlog of 100,000 the status index alone made each tick read them all
    # (37 ms a tick on PostgreSQL). Queries name the status as a literal (SCHEDULED below) so
    # that SQLite and PostgreSQL's cached plans can use this partial index.
    Index(
        "ix_deliveries_scheduled",
        "status",  # for SQLite: equality on status and a range on due_at beats ix_deliveries_lease
        "due_at",
        sqlite_where=text("status = 'scheduled'"),
        postgresql_where=text("status = 'scheduled'"),
    ),
    # Paced promotion (services/schedule.py) takes the due scheduled deliveries one lane at a
    # time, earliest first: a critical one due behind 100,000 due low ones is found at once.
    Index(
        "ix_deliveries_due_lane",
        "priority",
        "due_at",
        sqlite_where=text("status = 'scheduled'"),
        postgresql_where=text("status = 'scheduled'"),
    ),
    # The expiry sweep reads only deliveries that have an expiry, not every queued one.
    Index(
        "ix_deliveries_expiry",
        "expires_at",
        sqlite_where=text("expires_at IS NOT NULL"),
        postgresql_where=text("expires_at IS NOT NULL"),
    ),
    # Dead letters and failures, newest first, without walking a million finished rows (the
    # console; migration 0008). Partial: only deliveries in these states are in them.
    Index(
        "ix_deliveries_dead",
        "id",
        sqlite_where=text("status = 'dead'"),
        postgresql_where=text("status = 'dead'"),
    ),
    Index(
        "ix_deliveries_failed",
        "id",
        sqlite_where=text("status = 'failed'"),
        postgresql_where=text("status = 'failed'"),
    ),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), nullable=False),
    Column("n", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("code", String(64)),
    Column("detail", Text),
    Column("latency_ms", Float),
    Column("ambiguous", Boolean, nullable=False),
    Index("ix_attempts_delivery", "delivery_id", "n"),
    Index(
        "ix_attempts_ambiguous",
        "at",
        sqlite_where=text("ambiguous = true"),
        postgresql_where=text("ambiguous = true"),
    ),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("channel", String(16), nullable=False),
    Column("address", String(512), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("channel", "address"),
)

# Notification-level dedup: a (dedup_key, user) sent within the window is skipped as duplicate.
dedup_keys = Table(
    "dedup_keys",
    metadata,
    Column("key", String(255), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("notification_id", String(40), nullable=False),
    Column("expires_at", Float, nullable=False),
    PrimaryKeyConstraint("key", "user_id"),
)

# Routing rules per event type (from the API or the configuration file).
rules = Table(
    "rules",
    metadata,
    Column("event_type", String(128), primary_key=True),
    Column("body", Text, nullable=False),
    Column("source", String(16), nullable=False),  # "api" or "config"
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Every event received (HTTP or broker) and what became of it: routed into a notification,
# skipped because the rule's condition was false, or held as unrouted (no rule).
events = Table(
    "events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(64)),
    Column("detail", Text),
    Column("notification_id", String(40)),
    Column("body", Text, nullable=False),
    Column("source", String(16), nullable=False),  # "http" or "amqp"
    Column("created_at", Float, nullable=False),
    Index("ix_events_type", "type", "id"),
    Index("ix_events_status", "status", "id"),
)

topics = Table(
    "topics",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("name", Text),
    Column("data", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Fan-out walks a topic's subscribers in user_id order from the notification's route_cursor.
topic_subscribers = Table(
    "topic_subscribers",
    metadata,
    Column("topic", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("topic", "user_id"),
)

# Transactional outbox for broker queues: a row is written in the same transaction that makes
# a delivery claimable, and relayed to the broker after commit (due_at delays retries).
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("due_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    # Relays take due rows by priority first: a critical message is published ahead of a
    # released backlog of low ones, not behind all of them.
    Index("ix_outbox_due", "priority", "due_at", "id"),
)

# Named leases (for example the active scheduler), taken over when the holder stops renewing.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("until", Float, nullable=False),
    Column("acquired_at", Float, nullable=False),
)

# The delivery funnel, kept as counts per hour and per day (issue 22): one row per (size,
# bucket, template, category, channel, provider, metric), bumped in the transaction of every
# change it counts (sent, delivered, opened, clicked, bounced, failed, dead, skipped:<reason>,
# …), so that GET /v1/stats reads a few thousand rows instead of scanning the deliveries.
# ``size`` is 3600 or 86400 (the same counts kept twice: a week by day reads 7 rows per group,
# not 168); ``bucket`` the start of the hour or UTC day (epoch seconds) the delivery was created
# in: a delivery's later events count in its own bucket, so rates stay rates (of the messages
# of Monday, how many were opened). On SQLite the table is clustered on its key (WITHOUT ROWID):
# a range of buckets is one walk of one b-tree.
delivery_rollups = Table(
    "delivery_rollups",
    metadata,
    Column("size", Integer, nullable=False),
    Column("bucket", BigInteger, nullable=False),
    Column("template", String(128), nullable=False),  # '-' for inline content
    Column("category", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("provider", String(32), nullable=False),  # '-' before any provider was tried
    Column("metric", String(80), nullable=False),
    Column("count", BigInteger, nullable=False),
    PrimaryKeyConstraint(
        "size", "bucket", "template", "category", "channel", "provider", "metric",
        name="pk_delivery_rollups_sized",  # created under that name by migration 0012
    ),
    sqlite_with_rowid=False,
)

# Engagement with a delivery: opens (the pixel, a client event, the widget) and clicks (each
# tracked link). One row per (delivery, kind, link, machine): the first time is recorded with
# what saw it; repeats bump ``count`` and ``last_at``. Machine events (privacy proxies, link
# scanners, bots) are kept apart from human ones, so rates are human rates.
delivery_events = Table(
    "delivery_events",
    metadata,
    Column("delivery_id", String(40), nullable=False),
    Column("kind", String(16), nullable=False),  # opened | clicked
    Column("link", Integer, nullable=False),  # the link's index in the message; -1 for opens
    Column("machine", Boolean, nullable=False),
    Column("why", String(32)),  # for machine events: user_agent | too_fast | proxy
    Column("url", Text),
    Column("source", String(16), nullable=False),  # pixel | redirect | client | inbox
    Column("user_agent", String(256)),
    Column("at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
    Column("count", Integer, nullable=False),
    PrimaryKeyConstraint("delivery_id", "kind", "link", "machine"),
)

# The live inbox's durable order (issue 19): one row per in-app item as it is sent, numbered per
# user in commit order. Stream event ids are these numbers, so a reconnect resumes from the
# database (``seq > Last-Event-ID``), whichever process sent the item and whichever streams it.
inbox_feed = Table(
    "inbox_feed",
    metadata,
    Column("user_id", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("delivery_id", String(40), nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("user_id", "seq", name="pk_inbox_feed"),
    UniqueConstraint("delivery_id", name="uq_inbox_feed_delivery"),
)
