"""Local servers that speak each provider's real protocol, for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def specs_dir() -> Path:
    """Where the providers' OpenAPI specs live: ``$HERALD_PROVIDER_SPECS``, else ``specs/`` here."""
    env = os.environ.get("HERALD_PROVIDER_SPECS")
    return Path(env) if env else Path(__file__).resolve().parent / "specs"
