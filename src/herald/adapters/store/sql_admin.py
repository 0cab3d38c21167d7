"""Store methods for operators (mixed into SqlStore): API keys and users in bulk.

``import_users`` writes a batch of checked user objects in one transaction with a handful of
statements whatever the batch size (an upsert of the users, the devices matched on kind and
token, the preferences replaced, the subscriptions added), so a file of a million users is a
thousand transactions, not a million.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, delete, insert, select, update

from herald.adapters.store import schema as t
from herald.adapters.store.database import Database
from herald.domain.models import ApiKey
from herald.ports import UserImport

_CHUNK = 500


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        scopes=frozenset(row.scopes.split(",")),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class SqlAdminMixin:
    db: Database
    _ins: Any

    # API keys --------------------------------------------------------------------------------
    async def list_api_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        k = t.api_keys

        def op(c: Connection) -> list[ApiKey]:
            q = select(k.c.id, k.c.name, k.c.scopes, k.c.created_at, k.c.last_used_at, k.c.revoked_at)
            if not include_revoked:
                q = q.where(k.c.revoked_at.is_(None))
            return [_key(r) for r in c.execute(q.order_by(k.c.created_at, k.c.id))]

        return await self.db.run(op)

    async def revoke_api_keys(self, ids_or_names: Sequence[str], *, now: float) -> list[ApiKey]:
        """Revoke the live keys with these ids or names; return those revoked."""
        k = t.api_keys
        wanted = list(ids_or_names)

        def op(c: Connection) -> list[ApiKey]:
            rows = c.execute(
                update(k)
                .where(k.c.revoked_at.is_(None), (k.c.id.in_(wanted)) | (k.c.name.in_(wanted)))
                .values(revoked_at=now)
                .returning(k.c.id, k.c.name, k.c.scopes, k.c.created_at, k.c.last_used_at, k.c.revoked_at)
            ).all()
            return [_key(r) for r in rows]

        return await self.db.run(op)

    async def touch_api_key(self, key_id: str, now: float) -> None:
        k = t.api_keys
        await self.db.run(lambda c: c.execute(update(k).where(k.c.id == key_id).values(last_used_at=now)))

    # Users in bulk ------------------------------------------------------------------------------
    async def existing_topics(self, keys: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(keys))

        def op(c: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(wanted), _CHUNK):
                q = select(t.topics.c.key).where(t.topics.c.key.in_(wanted[i : i + _CHUNK]))
                out.update(c.execute(q).scalars())
            return out

        return await self.db.run(op)

    async def import_users(
        self, items: Sequence[UserImport], *, now: float, checkpoint: tuple[str, str] | None = None
    ) -> None:
        users = [
            {
                "id": it.user.id,
                "email": it.user.email,
                "phone": it.user.phone,
                "locale": it.user.locale,
                "timezone": it.user.timezone,
                "data": _dumps(it.user.data),
                "webhook_url": it.user.webhook_url,
                "chat": _dumps(it.user.chat),
                "created_at": now,
                "updated_at": now,
            }
            for it in items
        ]
        with_devices = [it for it in items if it.devices]
        with_prefs = [it for it in items if it.preferences is not None]
        subs = [{"topic": key, "user_id": it.user.id, "created_at": now} for it in items for key in it.topics]

        def op(c: Connection) -> None:
            if users:
                stmt = self._ins(t.users)
                kept = ("email", "phone", "locale", "timezone", "data", "webhook_url", "chat", "updated_at")
                stmt = stmt.on_conflict_do_update(
                    index_elements=[t.users.c.id], set_={name: stmt.excluded[name] for name in kept}
                )
                c.execute(stmt, users)
            if with_devices:
                self._import_devices(c, with_devices)
            if with_prefs:
                self._import_preferences(c, with_prefs)
            if subs:
                c.execute(self._ins(t.topic_subscribers).on_conflict_do_nothing(), subs)
            if checkpoint is not None:
                name, value = checkpoint
                mark = self._ins(t.settings).values(name=name, value=value)
                mark = mark.on_conflict_do_update(index_elements=[t.settings.c.name], set_={"value": value})
                c.execute(mark)

        await self.db.run(op)

    def _import_devices(self, c: Connection, items: Sequence[UserImport]) -> None:
        d = t.devices
        ids = [it.user.id for it in items]
        existing: dict[tuple[str, str, str], str] = {}
        for i in range(0, len(ids), _CHUNK):
            q = select(d.c.id, d.c.user_id, d.c.kind, d.c.token).where(d.c.user_id.in_(ids[i : i + _CHUNK]))
            for row in c.execute(q):
                existing[(row.user_id, row.kind, row.token)] = row.id
        new: list[dict[str, Any]] = []
        again: list[dict[str, Any]] = []
        for it in items:
            for dev in it.devices:
                known = existing.get((dev.user_id, dev.kind, dev.token))
                if known is None:
                    existing[(dev.user_id, dev.kind, dev.token)] = dev.id
                    new.append(
                        {
                            "id": dev.id,
                            "user_id": dev.user_id,
                            "kind": dev.kind,
                            "token": dev.token,
                            "data": _dumps(dev.data),
                            "active": True,
                            "created_at": dev.created_at,
                        }
                    )
                else:
                    again.append({"b_id": known, "b_data": _dumps(dev.data)})
        if new:
            c.execute(insert(d), new)
        if again:
            c.execute(
                update(d)
                .where(d.c.id == bindparam("b_id"))
                .values(active=True, deactivated_at=None, data=bindparam("b_data")),
                again,
            )

    def _import_preferences(self, c: Connection, items: Sequence[UserImport]) -> None:
        ids = [it.user.id for it in items]
        for i in range(0, len(ids), _CHUNK):
            c.execute(delete(t.user_preferences).where(t.user_preferences.c.user_id.in_(ids[i : i + _CHUNK])))
        rows: list[dict[str, Any]] = []
        settings: list[dict[str, Any]] = []
        for it in items:
            p = it.preferences
            assert p is not None
            rows += [
                {"user_id": p.user_id, "channel": ch, "category": "*", "enabled": on}
                for ch, on in p.channels.items()
            ]
            rows += [
                {"user_id": p.user_id, "channel": ch, "category": cat, "enabled": on}
                for cat, chans in p.categories.items()
                for ch, on in chans.items()
            ]
            settings.append(
                {
                    "user_id": p.user_id,
                    "quiet_hours": _dumps(p.quiet_hours) if p.quiet_hours else None,
                    "digests": _dumps(p.digests),
                }
            )
        stmt = self._ins(t.user_settings)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.user_settings.c.user_id],
            set_={"quiet_hours": stmt.excluded.quiet_hours, "digests": stmt.excluded.digests},
        )
        c.execute(stmt, settings)
        if rows:
            c.execute(insert(t.user_preferences), rows)
