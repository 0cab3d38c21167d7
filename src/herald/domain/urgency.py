"""How urgent the work under way is: a hint for adapters that can order their work.

SQLite has one writer thread; whatever is queued for it runs one after the other. An API
request (someone waits for its answer), a claim (of deliveries to send, of notifications to
route: short, and critical work comes first in it) and the routing of critical/high
notifications should not wait behind a queue of batch work (result commits, routing writes of
normal and low notifications, sweeps). The current urgency is a
context variable, so it follows a request or a task without changing any signature: an entry
point or a service marks a block as :func:`urgent`, an adapter reads :func:`current`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

URGENT = 0  # someone waits, or the next step waits on it: API requests, claims, critical routing
NORMAL = 1  # batch work: result commits, routing writes of normal/low, sweeps

_current: ContextVar[int] = ContextVar("herald_urgency", default=NORMAL)


def current() -> int:
    return _current.get()


def mark_urgent() -> None:
    """Everything after this, in this task and the tasks it starts, is urgent."""
    _current.set(URGENT)


@contextmanager
def urgent() -> Iterator[None]:
    token = _current.set(URGENT)
    try:
        yield
    finally:
        _current.reset(token)
