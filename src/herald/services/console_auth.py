"""Console sign-in: an API key exchanged for a signed session, and the CSRF token of each session.

The session cookie holds the key's hash (never the key), an expiry and a random CSRF token,
signed with herald's secret for the purpose ``console``. Every request checks the key again
(through the short-lived key cache), so a revoked key's sessions stop within that cache's TTL.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from herald.domain.models import ApiKey
from herald.services.lookups import Lookups
from herald.services.signing import Signer

COOKIE = "herald_console"
_IMPLIED = {"admin": {"admin", "send", "read"}, "send": {"send", "read"}, "read": {"read"}}


@dataclass(slots=True, frozen=True)
class ConsoleSession:
    key: ApiKey
    csrf: str
    expires_at: float

    def may(self, scope: str) -> bool:
        return any(scope in _IMPLIED.get(s, set()) for s in self.key.scopes)

    @property
    def can_write(self) -> bool:
        """Changes (replay, cancel, edit) need an ``admin`` key; a ``read`` key may look."""
        return self.may("admin")


class ConsoleSessions:
    def __init__(self, signer: Signer, lookups: Lookups, *, ttl: float = 8 * 3600.0) -> None:
        self._signer = signer
        self._lookups = lookups
        self.ttl = ttl

    async def sign_in(self, key_hash: str, now: float) -> tuple[str, ConsoleSession] | None:
        """A cookie value and its session for a valid key's hash; None for an unknown key."""
        key = await self._lookups.api_key(key_hash)
        if key is None:
            return None
        expires = int(now + self.ttl)
        csrf = secrets.token_urlsafe(24)
        cookie = self._signer.sign("console", key_hash, str(expires), csrf)
        return cookie, ConsoleSession(key, csrf, float(expires))

    async def session(self, cookie: str | None, now: float) -> ConsoleSession | None:
        if not cookie:
            return None
        fields = self._signer.verify("console", cookie)
        if fields is None or len(fields) != 3:
            return None
        key_hash, expires, csrf = fields
        try:
            expires_at = float(expires)
        except ValueError:
            return None
        if expires_at < now:
            return None
        key = await self._lookups.api_key(key_hash)
        if key is None:
            return None
        return ConsoleSession(key, csrf, expires_at)

    @staticmethod
    def csrf_ok(session: ConsoleSession, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())
