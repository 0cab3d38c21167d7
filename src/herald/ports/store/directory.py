"""The directory roles of the store: API keys and settings, users with their devices and
preferences, templates, topics, and what routing reads of its recipients.

Every method is one transaction (all or nothing). Reads of several ids return only those that
exist, each once, whatever the order or repetition of the ids given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from herald.domain.models import ApiKey, Device, Preferences, Template, Topic, User
from herald.ports.records import RecipientContext, UserImport


class KeyStore(Protocol):
    """API keys (only the hash of a key's secret is stored) and named settings."""

    async def create_api_key(self, key: ApiKey, key_hash: str) -> None:
        """Store a new live key (id, name, scopes, creation time) under ``key_hash``, the hash
        of its secret; the secret itself is never stored. The id and hash must be new."""
        ...

    async def get_api_key(self, key_hash: str) -> ApiKey | None:
        """The live (not revoked) key whose secret hashes to ``key_hash``; None when there is
        none or it was revoked."""
        ...

    async def list_api_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Keys with their name, scopes, creation and last use, oldest first; never their hash.
        Revoked ones (with ``revoked_at``) only with ``include_revoked``."""
        ...

    async def revoke_api_keys(self, ids_or_names: Sequence[str], *, now: float) -> list[ApiKey]:
        """Revoke the live keys with these ids or names; return those revoked (a key revoked
        before is neither changed nor returned, so a repeat returns []). From the commit on,
        :meth:`get_api_key` no longer finds them (a process's key cache may for its TTL)."""
        ...

    async def touch_api_key(self, key_id: str, now: float) -> None:
        """Set the key's last use to ``now`` (an unknown id changes nothing). Bookkeeping for
        ``herald keys list``: callers write it in the background, at most once a minute per key
        and process, and may lose one."""
        ...

    async def get_setting(self, name: str) -> str | None:
        """The value of setting ``name`` (None: never set)."""
        ...

    async def put_setting_if_absent(self, name: str, value: str) -> str:
        """Store ``value`` unless a value exists; return the stored one. Atomic: of concurrent
        callers (any process) one value wins and every caller gets that value."""
        ...


class UserStore(Protocol):
    """Users' profiles (addresses, locale, time zone, data), their devices and preferences."""

    async def put_user(self, user: User) -> User:
        """Create the user or replace every profile field of the stored one (one upsert: two
        concurrent puts of a new user both succeed, the later write wins). Returns ``user``
        with ``created_at`` set to the stored creation time (kept from the first put)."""
        ...

    async def get_user(self, user_id: str) -> User | None:
        """The stored user (None: no such user)."""
        ...

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, User]:
        """{id: user} of those of ``user_ids`` that are stored (unknown ids are absent)."""
        ...

    async def delete_user(self, user_id: str) -> bool:
        """Erase the user's personal data: profile, devices, preferences, inbox contents.

        In one transaction: the user, its devices, preferences, settings (quiet hours, digests)
        and topic subscriptions are deleted; its deliveries stay in the log (counts, outcomes)
        with their address and content erased. Returns False when there was no such user (the
        rest is erased all the same, so a repeat is harmless)."""
        ...

    async def add_device(self, device: Device) -> Device:
        """Register a device, idempotently on (user, kind, token): a known one is reactivated
        with the new ``data`` and keeps its id and creation time (which the returned device
        carries); a new one is stored active under ``device.id``."""
        ...

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        """Delete the user's device ``device_id``; False when the user has no such device."""
        ...

    async def list_devices(self, user_ids: Sequence[str], *, active_only: bool = True) -> list[Device]:
        """The devices of these users, each user's oldest first; only active ones (not
        deactivated by a dead token) unless ``active_only`` is False."""
        ...

    async def get_preferences(self, user_id: str) -> Preferences | None:
        """The user's channel and category switches, quiet hours and digests (None: nothing
        stored, the defaults apply)."""
        ...

    async def get_preferences_many(self, user_ids: Sequence[str]) -> dict[str, Preferences]:
        """:meth:`get_preferences` of several users: {id: preferences} of those with any."""
        ...

    async def put_preferences(self, prefs: Preferences) -> None:
        """Replace the user's preferences as a whole (switches, quiet hours, digests). Concurrent
        writers for one user are serialised: the result is one writer's preferences, never a
        mix."""
        ...

    async def import_users(
        self, items: Sequence[UserImport], *, now: float, checkpoint: tuple[str, str] | None = None
    ) -> None:
        """Upsert users with their devices (matched on kind and token), preferences (replaced)
        and topic subscriptions (added), and the ``checkpoint`` setting, in one transaction.

        A stored user keeps its creation time and gets every profile field of the import; a
        checkpoint ``(name, value)`` overwrites that setting (the import's resume point: it
        commits with the batch it follows). Topics are not checked here (the service
        checks them with :meth:`TopicStore.existing_topics`)."""
        ...


class TemplateStore(Protocol):
    """Versioned message templates: a put makes a new version, old versions stay readable."""

    async def put_template(self, template: Template) -> Template:
        """Store a new version (the stored ``version`` is one more than the latest)."""
        ...

    async def get_template(self, name: str, version: int | None = None) -> Template | None:
        """Version ``version`` of the template, or without one its latest version. None when
        there is no such version, or (latest only) when the name was deleted; a given version
        is found even after a delete (notifications accepted before it still render)."""
        ...

    async def delete_template(self, name: str) -> bool:
        """Stop the name resolving (every version is marked deleted, none is removed); a later
        :meth:`put_template` makes it resolve again with a new version. False when the name is
        unknown or already deleted."""
        ...


class TopicStore(Protocol):
    """Topics and their subscribers (a topic send fans out to every subscriber)."""

    async def put_topic(self, topic: Topic) -> Topic:
        """Create the topic or replace its name and data (keeping its creation time); returns
        the stored topic with its current subscriber count."""
        ...

    async def get_topic(self, key: str) -> Topic | None:
        """The topic with its current subscriber count."""
        ...

    async def delete_topic(self, key: str) -> bool:
        """Delete the topic and every subscription to it; False when there was no such topic."""
        ...

    async def has_topic(self, key: str) -> bool:
        """Whether topic ``key`` exists (cheaper than :meth:`get_topic`: no count)."""
        ...

    async def existing_topics(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that name existing topics."""
        ...

    async def add_subscribers(self, key: str, user_ids: Sequence[str], *, now: float) -> int:
        """Subscribe users to topic ``key`` (already subscribed ones are left as they are);
        returns how many were new. The topic's existence is the caller's to check."""
        ...

    async def remove_subscribers(self, key: str, user_ids: Sequence[str]) -> int:
        """Unsubscribe users from topic ``key``; returns how many were subscribed."""
        ...

    async def subscriber_page(self, key: str, *, after: str | None, limit: int) -> list[str]:
        """Subscribers in user id order after ``after`` (fan-out streams through these)."""
        ...

    async def count_subscribers(self, key: str) -> int:
        """How many users are subscribed to topic ``key`` now (0 for an unknown topic)."""
        ...


class RecipientStore(Protocol):
    """What routing reads of its recipients, in one go per chunk of users."""

    async def recipient_context(self, user_ids: Sequence[str], *, with_devices: bool) -> RecipientContext:
        """Users, their preferences, active devices (when asked) and suppressed addresses.

        Unknown users are absent from ``users``; ``suppressed`` holds, per channel, those of
        the users' own addresses (email, phone, webhook URL) that are suppressed. Read in one
        transaction, a chunk of users at a time."""
        ...


class SuppressionStore(Protocol):
    """Dead addresses: an address suppressed on a channel is never sent to again."""

    async def suppress_address(self, channel: str, address: str, reason: str, *, now: float) -> None:
        """Suppress ``address`` on ``channel`` with ``reason`` (a bounce, a complaint, a dead
        address), idempotently (the first reason is kept). On ``push`` the address is a device
        token: the devices with it are deactivated instead."""
        ...

    async def suppressed(self, channel: str, addresses: Sequence[str]) -> set[str]:
        """Those of ``addresses`` that are suppressed on ``channel``."""
        ...


class DirectoryStore(
    KeyStore, UserStore, TemplateStore, TopicStore, RecipientStore, SuppressionStore, Protocol
):
    """Every directory role: the people, addresses and content herald sends with."""
