"""The directory: users, their devices and preferences, topics and their subscribers, users in
bulk. The API (``/v1/users``, ``/v1/topics``), the end users' pages (the preference page,
unsubscribe) and ``herald users import`` call this service; the checks of a user's fields are
those of :mod:`herald.services.user_fields`, whichever way the user comes in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from herald.domain.errors import NotFound, ValidationError
from herald.domain.models import Category, Device, Preferences, Topic, User
from herald.domain.validation import check_id
from herald.ports import Clock, Store
from herald.services.user_fields import (
    DeviceBody,
    PreferencesBody,
    UserBody,
    check_preferences,
    device_from_body,
    user_from_body,
)
from herald.services.user_import import BatchOutcome, CheckedBatch, check_batch, import_batch, write_batch


class Directory:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        categories: Mapping[str, Category],
        *,
        forget_user: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.categories = categories
        self._forget_user = forget_user  # this process's cache of users (services.lookups)

    # Users -------------------------------------------------------------------------------------
    async def user(self, user_id: str) -> User | None:
        return await self.store.get_user(user_id)

    async def require_user(self, user_id: str) -> User:
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id} does not exist")
        return user

    async def put_user(self, user_id: str, body: UserBody) -> User:
        """Create or replace a user (ValidationError names the field at fault)."""
        return await self.store.put_user(user_from_body(user_id, body, self.clock.now()))

    async def user_with_devices(self, user_id: str) -> tuple[User, list[Device]]:
        """The user and every device of theirs, active or not (NotFound if no such user)."""
        user = await self.require_user(user_id)
        return user, await self.store.list_devices([user_id], active_only=False)

    async def delete_user(self, user_id: str) -> None:
        """Delete a user (NotFound if there is none); a send from this process to them is
        refused at once."""
        deleted = await self.store.delete_user(user_id)
        if self._forget_user is not None:
            self._forget_user(user_id)
        if not deleted:
            raise NotFound(f"user {user_id} does not exist")

    async def add_device(self, user_id: str, body: DeviceBody) -> Device:
        await self.require_user(user_id)
        return await self.store.add_device(device_from_body(user_id, body, self.clock.now()))

    async def remove_device(self, user_id: str, device_id: str) -> None:
        if not await self.store.remove_device(user_id, device_id):
            raise NotFound(f"device {device_id} does not exist")

    # Preferences -------------------------------------------------------------------------------
    async def preferences(self, user_id: str) -> Preferences | None:
        """The user's stored preferences (None: the defaults); NotFound if no such user."""
        await self.require_user(user_id)
        return await self.store.get_preferences(user_id)

    async def put_preferences(self, user_id: str, body: PreferencesBody) -> Preferences:
        """Replace the user's preferences: NotFound if no such user; every part is checked
        before anything is stored (ValidationError names the field)."""
        await self.require_user(user_id)
        prefs = check_preferences(user_id, body, self.categories)
        await self.store.put_preferences(prefs)
        return prefs

    async def save_preferences(self, prefs: Preferences) -> None:
        """Store preferences built from the hosted preference page (its own checks)."""
        await self.store.put_preferences(prefs)

    async def unsubscribe(self, user_id: str, category: str, channel: str) -> None:
        """An unsubscribe link: this category off on this channel (a user deleted meanwhile
        stays deleted)."""
        prefs = await self.store.get_preferences(user_id) or Preferences(user_id=user_id)
        prefs.categories.setdefault(category, {})[channel] = False
        if await self.store.get_user(user_id) is not None:
            await self.store.put_preferences(prefs)

    # Topics ------------------------------------------------------------------------------------
    async def put_topic(self, key: str, *, name: str | None, data: dict[str, Any]) -> Topic:
        check_id(key, "key")
        return await self.store.put_topic(Topic(key=key, name=name, data=data, updated_at=self.clock.now()))

    async def topic(self, key: str) -> Topic:
        topic = await self.store.get_topic(key)
        if topic is None:
            raise NotFound(f"topic {key!r} does not exist")
        return topic

    async def delete_topic(self, key: str) -> None:
        if not await self.store.delete_topic(key):
            raise NotFound(f"topic {key!r} does not exist")

    async def _existing_topic(self, key: str) -> None:
        if not await self.store.has_topic(key):
            raise NotFound(f"topic {key!r} does not exist")

    async def subscribe(self, key: str, user_ids: Sequence[str]) -> tuple[int, int]:
        """Subscribe existing users (ValidationError names the unknown ones; nothing is
        added then). Returns (added, subscribers now)."""
        await self._existing_topic(key)
        ids = [check_id(u, f"user_ids[{i}]") for i, u in enumerate(user_ids)]
        found = await self.store.get_users(ids)
        missing = [u for u in dict.fromkeys(ids) if u not in found]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValidationError(f"unknown user(s): {shown}", field="user_ids")
        added = await self.store.add_subscribers(key, ids, now=self.clock.now())
        return added, await self.store.count_subscribers(key)

    async def unsubscribe_users(self, key: str, user_ids: Sequence[str]) -> tuple[int, int]:
        """Returns (removed, subscribers now)."""
        await self._existing_topic(key)
        removed = await self.store.remove_subscribers(key, user_ids)
        return removed, await self.store.count_subscribers(key)

    # Users in bulk -----------------------------------------------------------------------------
    async def import_batch(self, objects: Sequence[Any]) -> BatchOutcome:
        """``POST /v1/users/batch``: check every object, write those that pass in one transaction."""
        return await import_batch(self.store, objects, self.categories, self.clock.now())

    def check_batch(self, objects: Sequence[Any], now: float) -> CheckedBatch:
        """Check a file import's batch (CPU only: the next batch is checked while the previous
        one is being written)."""
        return check_batch(objects, self.categories, now)

    async def write_batch(
        self,
        checked: CheckedBatch,
        now: float,
        *,
        checkpoint: tuple[str, Callable[[int, int], str]],
        known_topics: set[str],
    ) -> BatchOutcome:
        """Write a file import's checked batch with its checkpoint (see user_import.write_batch)."""
        return await write_batch(self.store, checked, now, checkpoint=checkpoint, known_topics=known_topics)

    async def import_checkpoint(self, name: str) -> str | None:
        """Where an interrupted file import stopped (the checkpoint its batches write)."""
        return await self.store.get_setting(name)
