"""schemathesis hooks for tests/integration/test_schemathesis.py: herald's error form."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def problem_json_for_4xx(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx answer is ``application/problem+json`` (RFC 9457), as PRODUCT.md says."""
    if 400 <= response.status_code < 500:
        ctype = response.headers.get("content-type") or response.headers.get("Content-Type") or ""
        if isinstance(ctype, list):
            ctype = ctype[0] if ctype else ""
        if not str(ctype).startswith("application/problem+json"):
            raise AssertionError(f"{response.status_code} answered as {ctype!r}, not problem+json")
