"""API keys, the domain type: stored hashed (``services/api_keys.py`` makes and hashes them).
Apart from ``domain/models.py`` so that ``herald keys create`` need not build every domain type
(``tests/unit/test_cli_imports.py``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: float = 0.0
    last_used_at: float | None = None
    revoked_at: float | None = None
