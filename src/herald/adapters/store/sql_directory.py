"""The directory of the SQL store (mixed into SqlStore): API keys, settings, users, devices,
preferences, templates and suppressions: what routing reads about who and what, and what the
API and the operators write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.adapters.store.rows import _device, _dumps, _preferences_into, _template, _user
from herald.domain.models import ApiKey, Channel, Device, Preferences, Template, User


def suppress(c: Connection, ins: Any, channel: str, address: str, reason: str, now: float) -> None:
    """Stop sending to ``address`` on ``channel`` in ``c``'s transaction: a push token's device
    is deactivated, any other address goes on the suppression list. ``ins``: the dialect's
    ``insert`` (for ON CONFLICT DO NOTHING)."""
    if channel == Channel.PUSH:
        c.execute(
            update(t.devices)
            .where(t.devices.c.token == address, t.devices.c.active.is_(True))
            .values(active=False, deactivated_at=now)
        )
        return
    c.execute(
        ins(t.suppressions)
        .values(channel=channel, address=address, reason=reason, created_at=now)
        .on_conflict_do_nothing()
    )


class SqlDirectoryMixin:
    db: Database
    _ins: Any

    # API keys and settings ------------------------------------------------------------------
    async def create_api_key(self, key: ApiKey, key_hash: str) -> None:
        def op(c: Connection) -> None:
            c.execute(
                insert(t.api_keys).values(
                    id=key.id,
                    name=key.name,
                    key_hash=key_hash,
                    scopes=",".join(sorted(key.scopes)),
                    created_at=key.created_at,
                )
            )

        await self.db.run(op)

    async def get_api_key(self, key_hash: str) -> ApiKey | None:
        def op(c: Connection) -> ApiKey | None:
            row = c.execute(
                select(t.api_keys).where(t.api_keys.c.key_hash == key_hash, t.api_keys.c.revoked_at.is_(None))
            ).first()
            if row is None:
                return None
            return ApiKey(
                id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")), created_at=row.created_at
            )

        return await self.db.run(op)

    async def get_setting(self, name: str) -> str | None:
        return await self.db.run(
            lambda c: c.execute(select(t.settings.c.value).where(t.settings.c.name == name)).scalar()
        )

    async def put_setting_if_absent(self, name: str, value: str) -> str:
        def op(c: Connection) -> str:
            c.execute(self._ins(t.settings).values(name=name, value=value).on_conflict_do_nothing())
            stored = c.execute(select(t.settings.c.value).where(t.settings.c.name == name)).scalar_one()
            return str(stored)

        return await self.db.run(op)

    # Users -----------------------------------------------------------------------------------
    async def put_user(self, user: User) -> User:
        def op(c: Connection) -> User:
            values = {
                "email": user.email,
                "phone": user.phone,
                "locale": user.locale,
                "timezone": user.timezone,
                "data": _dumps(user.data),
                "webhook_url": user.webhook_url,
                "chat": _dumps(user.chat),
                "updated_at": user.updated_at,
            }
            # One upsert: two concurrent PUTs of a new user must not both try to INSERT
            # (PostgreSQL runs them in parallel; SQLite's single writer hid the race).
            stmt = self._ins(t.users).values(id=user.id, created_at=user.updated_at, **values)
            stmt = stmt.on_conflict_do_update(index_elements=[t.users.c.id], set_=values)
            user.created_at = c.execute(stmt.returning(t.users.c.created_at)).scalar_one()
            return user

        return await self.db.run(op)

    async def get_user(self, user_id: str) -> User | None:
        def op(c: Connection) -> User | None:
            row = c.execute(select(t.users).where(t.users.c.id == user_id)).first()
            return _user(row) if row else None

        return await self.db.run(op)

    async def get_users(self, user_ids: Sequence[str]) -> dict[str, User]:
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> dict[str, User]:
            out: dict[str, User] = {}
            for i in range(0, len(ids), 500):
                for row in c.execute(select(t.users).where(t.users.c.id.in_(ids[i : i + 500]))):
                    out[row.id] = _user(row)
            return out

        return await self.db.run(op)

    async def delete_user(self, user_id: str) -> bool:
        def op(c: Connection) -> bool:
            gone = c.execute(delete(t.users).where(t.users.c.id == user_id)).rowcount > 0
            c.execute(delete(t.devices).where(t.devices.c.user_id == user_id))
            c.execute(delete(t.user_preferences).where(t.user_preferences.c.user_id == user_id))
            c.execute(delete(t.user_settings).where(t.user_settings.c.user_id == user_id))
            c.execute(delete(t.topic_subscribers).where(t.topic_subscribers.c.user_id == user_id))
            # Keep the delivery log (counts, outcomes) but erase what identifies the person.
            c.execute(
                update(t.deliveries)
                .where(t.deliveries.c.user_id == user_id)
                .values(address=None, content="{}")
            )
            return gone

        return await self.db.run(op)

    # Devices ---------------------------------------------------------------------------------
    async def add_device(self, device: Device) -> Device:
        def op(c: Connection) -> Device:
            row = c.execute(
                select(t.devices).where(
                    t.devices.c.user_id == device.user_id,
                    t.devices.c.kind == device.kind,
                    t.devices.c.token == device.token,
                )
            ).first()
            if row is not None:
                c.execute(
                    update(t.devices)
                    .where(t.devices.c.id == row.id)
                    .values(active=True, deactivated_at=None, data=_dumps(device.data))
                )
                device.id = row.id
                device.created_at = row.created_at
                return device
            c.execute(
                insert(t.devices).values(
                    id=device.id,
                    user_id=device.user_id,
                    kind=device.kind,
                    token=device.token,
                    data=_dumps(device.data),
                    active=True,
                    created_at=device.created_at,
                )
            )
            return device

        return await self.db.run(op)

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        return await self.db.run(
            lambda c: (
                c.execute(
                    delete(t.devices).where(t.devices.c.user_id == user_id, t.devices.c.id == device_id)
                ).rowcount
                > 0
            )
        )

    async def list_devices(self, user_ids: Sequence[str], *, active_only: bool = True) -> list[Device]:
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> list[Device]:
            out: list[Device] = []
            for i in range(0, len(ids), 500):
                q = select(t.devices).where(t.devices.c.user_id.in_(ids[i : i + 500]))
                if active_only:
                    q = q.where(t.devices.c.active.is_(True))
                out.extend(_device(r) for r in c.execute(q.order_by(t.devices.c.created_at)))
            return out

        return await self.db.run(op)

    # Preferences ---------------------------------------------------------------------------
    async def get_preferences(self, user_id: str) -> Preferences | None:
        return (await self.get_preferences_many([user_id])).get(user_id)

    async def get_preferences_many(self, user_ids: Sequence[str]) -> dict[str, Preferences]:
        ids = list(dict.fromkeys(user_ids))

        def op(c: Connection) -> dict[str, Preferences]:
            out: dict[str, Preferences] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                _preferences_into(
                    out,
                    c.execute(select(t.user_preferences).where(t.user_preferences.c.user_id.in_(chunk))),
                    c.execute(select(t.user_settings).where(t.user_settings.c.user_id.in_(chunk))),
                )
            return out

        return await self.db.run(op)

    async def put_preferences(self, prefs: Preferences) -> None:
        def op(c: Connection) -> None:
            # The settings row is upserted first: its row lock orders concurrent writers for
            # one user on PostgreSQL, so the delete below sees the previous writer's rows
            # instead of both inserting the same keys.
            settings = {
                "quiet_hours": _dumps(prefs.quiet_hours) if prefs.quiet_hours else None,
                "digests": _dumps(prefs.digests),
            }
            c.execute(
                self._ins(t.user_settings)
                .values(user_id=prefs.user_id, **settings)
                .on_conflict_do_update(index_elements=[t.user_settings.c.user_id], set_=settings)
            )
            c.execute(delete(t.user_preferences).where(t.user_preferences.c.user_id == prefs.user_id))
            rows = [
                {"user_id": prefs.user_id, "channel": ch, "category": "*", "enabled": on}
                for ch, on in prefs.channels.items()
            ]
            rows += [
                {"user_id": prefs.user_id, "channel": ch, "category": cat, "enabled": on}
                for cat, chans in prefs.categories.items()
                for ch, on in chans.items()
            ]
            if rows:
                c.execute(insert(t.user_preferences), rows)

        await self.db.run(op)

    # Templates -----------------------------------------------------------------------------
    async def put_template(self, template: Template) -> Template:
        def op(c: Connection) -> Template:
            while True:
                latest = c.execute(
                    select(func.max(t.templates.c.version)).where(t.templates.c.name == template.name)
                ).scalar()
                template.version = (latest or 0) + 1
                # A concurrent writer may take the same version first (PostgreSQL): the insert
                # then does nothing (after waiting for that writer's commit) and we read again.
                inserted = c.execute(
                    self._ins(t.templates)
                    .values(
                        name=template.name,
                        version=template.version,
                        category=template.category,
                        channels=_dumps(template.channels),
                        locales=_dumps(template.locales),
                        default_locale=template.default_locale,
                        deleted=False,
                        created_at=template.created_at,
                    )
                    .on_conflict_do_nothing()
                    .returning(t.templates.c.version)
                ).first()
                if inserted is not None:
                    return template

        return await self.db.run(op)

    async def get_template(self, name: str, version: int | None = None) -> Template | None:
        def op(c: Connection) -> Template | None:
            q = select(t.templates).where(t.templates.c.name == name)
            if version is None:
                q = q.order_by(t.templates.c.version.desc()).limit(1)
            else:
                q = q.where(t.templates.c.version == version)
            row = c.execute(q).first()
            if row is None or (version is None and row.deleted):
                return None
            return _template(row)

        return await self.db.run(op)

    async def delete_template(self, name: str) -> bool:
        def op(c: Connection) -> bool:
            # Versions stay for notifications still routing; the name stops resolving.
            latest = c.execute(
                select(t.templates.c.version, t.templates.c.deleted)
                .where(t.templates.c.name == name)
                .order_by(t.templates.c.version.desc())
                .limit(1)
            ).first()
            if latest is None or latest.deleted:
                return False
            c.execute(update(t.templates).where(t.templates.c.name == name).values(deleted=True))
            return True

        return await self.db.run(op)

    # Suppressions -----------------------------------------------------------------------------
    async def suppress_address(self, channel: str, address: str, reason: str, *, now: float) -> None:
        await self.db.run(lambda c: suppress(c, self._ins, channel, address, reason, now))

    async def suppressed(self, channel: str, addresses: Sequence[str]) -> set[str]:
        s = t.suppressions
        addrs = list(dict.fromkeys(addresses))

        def op(c: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(addrs), 500):
                out.update(
                    c.execute(
                        select(s.c.address).where(s.c.channel == channel, s.c.address.in_(addrs[i : i + 500]))
                    ).scalars()
                )
            return out

        return await self.db.run(op)
