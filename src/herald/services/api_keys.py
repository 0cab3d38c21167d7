"""API keys: creation, hashing, scopes and revocation. No web framework here: the CLI creates
keys too."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from herald.domain.errors import ValidationError
from herald.domain.ids import new_id
from herald.domain.keys import ApiKey

if TYPE_CHECKING:  # `herald keys create` imports this module: not the ports' 30 protocols
    from herald.ports import Clock, Store

SCOPES = ("admin", "send", "read")

# A key's ``last_used_at`` is written at most this often per key and process: the request path
# stays read-only while an operator still sees which keys are in use (to the minute).
LAST_USED_RESOLUTION_SECONDS = 60.0


def hash_key(raw: str) -> str:
    # Keys are 32 random bytes: a fast hash is enough, and keeps authentication off the CPU.
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_key(name: str, scopes: set[str], now: float) -> tuple[str, ApiKey]:
    raw = "hk_" + secrets.token_urlsafe(32)
    return raw, ApiKey(id=new_id("key"), name=name, scopes=frozenset(scopes), created_at=now)


class ApiKeyService:
    """``herald keys create|list|revoke``: keys kept hashed, never the secret."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create(self, name: str, scopes: set[str]) -> str:
        """A new key: stored hashed, its secret returned once."""
        raw, key = generate_key(name, scopes, self.clock.now())
        await self.store.create_api_key(key, hash_key(raw))
        return raw

    async def keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        return await self.store.list_api_keys(include_revoked=include_revoked)

    async def revoke(self, wanted: Sequence[str]) -> list[ApiKey]:
        """Revoke live keys named by id, or by a name only one live key has (ValidationError
        otherwise, and nothing is revoked)."""
        live = await self.store.list_api_keys()
        by_id = {k.id: k for k in live}
        chosen: list[str] = []
        for one in wanted:
            if one in by_id:
                chosen.append(one)
                continue
            named = [k.id for k in live if k.name == one]
            if not named:
                raise ValidationError(f"no live API key has the id or name {one!r} (see herald keys list)")
            if len(named) > 1:
                raise ValidationError(
                    f"{len(named)} live keys are named {one!r}: give the id ({', '.join(named)})"
                )
            chosen.append(named[0])
        return await self.store.revoke_api_keys(list(dict.fromkeys(chosen)), now=self.clock.now())
