"""Masking for log events: no secret, token, full push token, phone number or email in a log.

Three layers, applied to every value of every event (nested ones too):

* keys that name a secret (``authorization``, ``password``, ``api_key``, ``*_secret``,
  ``*token`` ...) print ``***`` (tokens keep their first and last four characters);
* patterns inside any text: ``Bearer ...``, herald API keys (``hk_``) and user tokens (``ut_``),
  URL passwords and secret query parameters, PEM private keys, long hex or base64 runs (push
  tokens, signatures), emails (``a***@example.com``) and phone numbers (``+33******78``);
* the configured secrets themselves (:func:`register_secrets`, called at start with every
  provider credential), wherever they appear.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

from pydantic import SecretBytes, SecretStr

MASK = "***"
SECRET_KEY = re.compile(
    r"(?i)(authorization|password|passwd|secret|api_?key|private_?key|credential|cookie|signature|auth_?token)"
)
_TOKEN_KEY = re.compile(r"(?i)(^|_)(token|endpoint|push_token|device_token|registration_id)$")
_PATTERNS = re.compile(
    r"(?P<pem>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))"
    r"|(?P<bearer>(?i:bearer|basic)\s+)[^\s,;\"']+"
    r"|(?P<herald>\b(?:hk|ut)_)[A-Za-z0-9_.\-]{8,}"
    r"|(?P<userinfo>://[^/\s:@]+:)[^@\s/]+@"
    r"|(?P<query>(?:[?&]|\b)(?i:token|key|sig|signature|secret|password|access_token|api_key|auth)=)[^&\s\"']+"
    r"|(?P<email>\b[A-Za-z0-9])[A-Za-z0-9._%+\-]*(?P<domain>@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,})"
    r"|(?P<phone>\+\d{8,15})\b"
    r"|(?P<long>[A-Za-z0-9_\-:]{40,}|\b[A-Fa-f0-9]{32,}\b)",
    re.DOTALL,
)

_secrets: frozenset[str] = frozenset()
_lock = threading.Lock()


def register_secrets(values: Iterable[Any]) -> None:
    """Mask these values wherever they appear in a log line (provider credentials, the
    signing secret). Accepts SecretStr and nested dicts/lists of them."""
    global _secrets  # noqa: PLW0603 - one registry per process, grown at start
    found: set[str] = set()
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, SecretStr | SecretBytes):
            v = v.get_secret_value()
            v = v.decode(errors="replace") if isinstance(v, bytes) else v
        if isinstance(v, str):
            if len(v) >= 6:
                found.add(v)
                found.update(line.strip() for line in v.splitlines() if len(line.strip()) >= 16)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple | set):
            stack.extend(v)
    with _lock:
        _secrets = _secrets | found


def partial(token: str) -> str:
    return f"{token[:4]}…{token[-4:]}" if len(token) >= 16 else MASK


def _sub(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "pem":
        return "-----PRIVATE KEY " + MASK + "-----"
    if kind == "domain":  # the email's local part, then its domain
        return f"{m.group('email')}{MASK}{m.group('domain')}"
    if kind in ("bearer", "herald", "query"):
        return m.group(kind) + MASK
    if kind == "userinfo":
        return m.group(kind) + MASK + "@"
    if kind == "phone":
        digits = m.group(kind)[1:]
        return "+" + digits[:2] + "*" * (len(digits) - 4) + digits[-2:]
    return partial(m.group(0))


def redact_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if len(text) < 12:
        return text
    return _PATTERNS.sub(_sub, text)


def redact_value(value: Any, key: str = "", depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, str):
        if key and SECRET_KEY.search(key):
            return MASK
        if key and _TOKEN_KEY.search(key):
            return partial(value)
        return redact_text(value)
    if depth > 6:
        return MASK
    if isinstance(value, dict):
        return {k: redact_value(v, str(k), depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, key, depth + 1) for v in value]
    return redact_text(repr(value))


def redact_event(event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if key.startswith("_") or key in ("timestamp", "level"):
            continue  # _record (the stdlib formatter's) and the fields herald sets itself
        event[key] = redact_value(value, key if key != "event" else "")
    return event


__all__ = ["MASK", "SECRET_KEY", "partial", "redact_event", "redact_text", "redact_value", "register_secrets"]
