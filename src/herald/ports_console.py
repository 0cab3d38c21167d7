"""The console's read model now lives in :mod:`herald.ports.console`; this name stays importable
for the modules that still use it (import from :mod:`herald.ports` in new code)."""

from __future__ import annotations

from herald.ports.console import BucketCount, ConsoleReads, SearchQuery

__all__ = ["BucketCount", "ConsoleReads", "SearchQuery"]
