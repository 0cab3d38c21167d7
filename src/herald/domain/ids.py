"""Sortable ids. A module of their own, as :mod:`herald.domain.keys` is: ``herald keys create``
makes one id and one key without building every domain type (``domain/models.py`` creates ~25
classes at import: a fifth of that command's start)."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """A sortable id: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Sortable ids make cursor pagination a plain ``id < cursor`` comparison.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "_" + "".join(reversed(chars))
