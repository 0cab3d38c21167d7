"""API keys: creation, hashing and scopes. No web framework here: the CLI creates keys too."""

from __future__ import annotations

import hashlib
import secrets

from herald.domain.models import ApiKey, new_id

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
