"""Signed one-click unsubscribe links (RFC 8058) for opt-out-able categories."""

from __future__ import annotations

import base64
import hashlib
import hmac

from herald.domain.errors import ValidationError


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UnsubscribeSigner:
    def __init__(self, secret: bytes, public_url: str) -> None:
        self._secret = secret
        self.public_url = public_url.rstrip("/")

    def token(self, user_id: str, category: str, channel: str) -> str:
        payload = f"{user_id}\x1f{category}\x1f{channel}".encode()
        mac = hmac.new(self._secret, b"unsub\x00" + payload, hashlib.sha256).digest()[:16]
        return _b64(payload) + "." + _b64(mac)

    def url(self, user_id: str, category: str, channel: str) -> str:
        return f"{self.public_url}/v1/unsubscribe/{self.token(user_id, category, channel)}"

    def verify(self, token: str) -> tuple[str, str, str]:
        try:
            body, mac = token.split(".", 1)
            payload = _unb64(body)
            given = _unb64(mac)
        except (ValueError, TypeError):
            raise ValidationError("malformed unsubscribe link") from None
        expected = hmac.new(self._secret, b"unsub\x00" + payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(expected, given):
            raise ValidationError("invalid unsubscribe link")
        user_id, category, channel = payload.decode().split("\x1f")
        return user_id, category, channel
