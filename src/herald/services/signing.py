"""HMAC-signed tokens: one-click unsubscribe links (RFC 8058) and end-user inbox tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac

from herald.domain.errors import AuthenticationError, ValidationError

_SEP = "\x1f"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs short payloads for one purpose each, so a token of one kind never passes as another."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: str, payload: bytes) -> bytes:
        return hmac.new(self._secret, purpose.encode() + b"\x00" + payload, hashlib.sha256).digest()[:18]

    def sign(self, purpose: str, *fields: str) -> str:
        payload = _SEP.join(fields).encode()
        return _b64(payload) + "." + _b64(self._mac(purpose, payload))

    def verify(self, purpose: str, token: str) -> list[str] | None:
        try:
            body, mac = token.split(".", 1)
            payload = _unb64(body)
            given = _unb64(mac)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(self._mac(purpose, payload), given):
            return None
        try:
            return payload.decode().split(_SEP)
        except UnicodeDecodeError:
            return None


class UnsubscribeSigner:
    def __init__(self, signer: Signer, public_url: str) -> None:
        self._signer = signer
        self.public_url = public_url.rstrip("/")

    def token(self, user_id: str, category: str, channel: str) -> str:
        return self._signer.sign("unsubscribe", user_id, category, channel)

    def url(self, user_id: str, category: str, channel: str) -> str:
        return f"{self.public_url}/v1/unsubscribe/{self.token(user_id, category, channel)}"

    def verify(self, token: str) -> tuple[str, str, str]:
        fields = self._signer.verify("unsubscribe", token)
        if fields is None or len(fields) != 3:
            raise ValidationError("invalid unsubscribe link")
        return fields[0], fields[1], fields[2]


class UserTokens:
    """Short-lived tokens that let an end user read only their own inbox."""

    def __init__(self, signer: Signer, ttl: float) -> None:
        self._signer = signer
        self.ttl = ttl

    def issue(self, user_id: str, now: float, ttl: float | None = None) -> tuple[str, float]:
        """A token valid ``ttl`` seconds (default: the configured one) from ``now``."""
        expires = int(now + (self.ttl if ttl is None else ttl))
        return "ut_" + self._signer.sign("user", user_id, str(expires)), float(expires)

    def verify(self, token: str, now: float) -> str:
        fields = self._signer.verify("user", token.removeprefix("ut_")) if token.startswith("ut_") else None
        if fields is None or len(fields) != 2:
            raise AuthenticationError("invalid user token")
        user_id, expires = fields
        if float(expires) < now:
            raise AuthenticationError("user token expired")
        return user_id
