"""The newest schema revision, read from the migration scripts without alembic or SQLAlchemy."""

from __future__ import annotations

import functools
import re
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r"^(revision|down_revision)\s*=\s*['\"]([^'\"]+)['\"]", re.M)


@functools.cache
def head_revision() -> str | None:
    """The newest revision of the migration scripts, read without loading alembic (whose
    import and script scan cost most of a short command's start). None when the scripts do not
    form one simple chain: alembic then decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict(_REVISION.findall(path.read_text(encoding="utf-8")))
        if "revision" in found:
            revisions.add(found["revision"])
            if "down_revision" in found:
                parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
