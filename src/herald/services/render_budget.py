"""The budget of one render: wall time, work, recursion depth and sizes, checked cooperatively.

A render of an untrusted template runs in a worker thread (services/render_pool.py), which
cannot be killed; so the budget is spent before every step that costs anything (a loop
iteration, a macro call, a filter or method in proportion to the length of what it walks, a
printed value in proportion to its size), and no single step may be long: every value a
template can build is bounded (``max_value``), widths, padding and repetition are refused
before anything is allocated, and the few library routines that are quadratic in their input
(tag stripping, URL detection) accept only a short input. The longest uninterruptible step is
then a sort or a scan of ``max_value`` items, a few milliseconds.
"""

from __future__ import annotations

import re
import string
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """The budget of one render (one channel variant of one delivery, or one preview)."""

    timeout_ms: int = 200  # CPU time of the rendering thread; wall time at most ten times that
    max_work: int = 300_000  # loop iterations + calls + items walked by filters and methods
    max_output: int = 512 * 1024  # characters rendered
    max_value: int = 256 * 1024  # characters or items of any one value a template builds
    max_depth: int = 64  # nested macro calls
    max_width: int = 10_000  # a width, padding, count or repetition argument
    max_range: int = 10_000  # items of range()
    max_quadratic: int = 32 * 1024  # input of striptags / urlize (quadratic in the worst case)


# The names under which the configuration sets each limit: an error names the one exceeded.
LIMIT_KEYS = MappingProxyType(
    {
        "timeout_ms": "templates.render_timeout_ms",
        "max_work": "templates.render_max_work",
        "max_output": "templates.render_max_output",
        "max_value": "templates.render_max_value",
        "max_depth": "templates.render_max_depth",
    }
)


class RenderLimitExceeded(SecurityError):
    """A render went over its budget; the message names the limit."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class NotPrintable(SecurityError):
    """A template tried to turn a function, class or other Python object into text."""


# The clocks are read every few steps (a step costs a microsecond or more; a step that walks
# many items, at once).
_CLOCK_EVERY = 16
# The time budget is the render thread's CPU time: on a machine whose cores are busy with other
# work, wall time would fail honest renders for good (a render_error is permanent). Wall time
# is bounded too, at this many budgets; a preview answers within about one budget regardless
# (render_pool.for_request).
_WALL_FACTOR = 10


class Budget:
    __slots__ = ("cpu_deadline", "depth", "limits", "ticks", "wall_deadline", "work")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        seconds = limits.timeout_ms / 1000
        self.cpu_deadline = time.thread_time() + seconds
        self.wall_deadline = time.monotonic() + seconds * _WALL_FACTOR
        self.work = limits.max_work
        self.depth = 0
        self.ticks = _CLOCK_EVERY

    def spend(self, n: int = 1) -> None:
        self.work -= n
        if self.work < 0:
            raise RenderLimitExceeded(
                f"work over {self.limits.max_work} operations ({LIMIT_KEYS['max_work']})",
                LIMIT_KEYS["max_work"],
            )
        self.ticks -= 1
        if self.ticks <= 0 or n > 1_000:
            self.ticks = _CLOCK_EVERY
            self.check_time()

    def check_time(self) -> None:
        if time.thread_time() > self.cpu_deadline or time.monotonic() > self.wall_deadline:
            raise RenderLimitExceeded(
                f"render time over {self.limits.timeout_ms} ms ({LIMIT_KEYS['timeout_ms']})",
                LIMIT_KEYS["timeout_ms"],
            )


class _Local(threading.local):
    budget: Budget | None = None


_local = _Local()


def current() -> Budget | None:
    return _local.budget


def active() -> Budget:
    """The running render's budget. Outside a render nothing may run: jinja folds constant
    filter calls at compile time, and refusing here keeps that work inside a budget too."""
    budget = _local.budget
    if budget is None:
        raise RenderLimitExceeded("evaluated outside a render", "none")
    return budget


class budget_for:
    """A fresh budget for the block (the previous one back after it). A class, not a generator
    context manager: it is entered once per render, and this is a third of the cost."""

    __slots__ = ("budget", "previous")

    def __init__(self, limits: RenderLimits) -> None:
        self.budget = Budget(limits)
        self.previous: Budget | None = None

    def __enter__(self) -> Budget:
        self.previous = _local.budget
        _local.budget = self.budget
        return self.budget

    def __exit__(self, *exc: object) -> None:
        _local.budget = self.previous


def spend(n: int = 1) -> None:
    budget = _local.budget
    if budget is None:
        raise RenderLimitExceeded("evaluated outside a render", "none")
    budget.spend(n)


def too_big(what: str) -> RenderLimitExceeded:
    b = active()
    return RenderLimitExceeded(
        f"{what} would exceed the size limit of {b.limits.max_value} ({LIMIT_KEYS['max_value']})",
        LIMIT_KEYS["max_value"],
    )


def check_width(value: Any, what: str = "a width, padding or count") -> None:
    b = active()
    if isinstance(value, int) and not isinstance(value, bool) and value > b.limits.max_width:
        raise RenderLimitExceeded(f"{what} of {value} is above the limit of {b.limits.max_width}", "width")


_SCALARS = (str, int, float, bool, type(None))
_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_CONTAINERS: tuple[type, ...] = (list, tuple, set, frozenset, range, *_VIEWS)


def weight(value: Any, *, printing: bool = True) -> int:
    """Characters plus items of ``value``, walked iteratively and refused past ``max_value``
    (a list holding itself by reference, nested, is exponentially large when printed).
    With ``printing``, anything that would print as a Python object description is refused."""
    cap = active().limits.max_value
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (*_SCALARS, Undefined)):
            total += 1
        elif isinstance(v, range):
            total += len(v)
        elif isinstance(v, dict):
            total += len(v)
            if total <= cap:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, _CONTAINERS):
            items = cast("Collection[Any]", v)  # one of _CONTAINERS
            total += len(items)
            if total <= cap:
                stack.extend(items)
        elif printing:
            raise NotPrintable(f"a template cannot print {_kind(v)}; print text, numbers, lists or mappings")
        else:
            total += 1
        if total > cap:
            raise too_big("a value")
    return total


def _kind(v: Any) -> str:
    if isinstance(v, type):
        return "a class"
    if callable(v):
        return "a function or method"
    if hasattr(v, "__next__"):
        return "an iterator (use |list or |join)"
    return f"an object of type {type(v).__name__}"


def opaque(v: Any) -> bool:
    """A function, class or internal object: never an argument a text operation may print."""
    return not isinstance(v, (*_SCALARS, *_CONTAINERS, dict, Undefined))


# Format specs: "{:>999999999}" and "%999999999d" are refused before str.format / % run.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_NUMBER = re.compile(r"\d+")
_FORMATTER = string.Formatter()


def check_brace_format(fmt: str) -> None:
    """``str.format`` specs: numbers within the width limit, no nested replacement fields
    (``'{:{}}'.format(1, 999999999)`` would take the width from an argument)."""
    if ":" not in fmt:
        return  # no format spec at all
    try:
        parsed = list(_FORMATTER.parse(fmt))
    except ValueError as exc:
        raise SecurityError(f"invalid format string: {exc}") from None
    for _, _, spec, _ in parsed:
        if not spec:
            continue
        if "{" in spec:
            raise RenderLimitExceeded("nested format fields are not allowed in templates", "width")
        for number in _NUMBER.findall(spec):
            check_width(int(number), "a format width or precision")


_PERCENT_RISK = re.compile(r"%[^a-zA-Z%]*(?:\*|\d{5,})")


def check_percent_format(fmt: str) -> None:
    if not _PERCENT_RISK.search(fmt):
        return  # no '*' and no number of five digits or more: every width is below the limit
    for m in _PERCENT_SPEC.finditer(fmt):
        width, precision = m.group(1), m.group(2)
        if "*" in (width, precision):
            raise RenderLimitExceeded("'*' widths are not allowed in templates", "width")
        for number in (width, precision):
            if number:
                check_width(int(number), "a format width or precision")


__all__ = [
    "LIMIT_KEYS",
    "Budget",
    "NotPrintable",
    "RenderLimitExceeded",
    "RenderLimits",
    "active",
    "budget_for",
    "check_brace_format",
    "check_percent_format",
    "check_width",
    "current",
    "opaque",
    "spend",
    "too_big",
    "weight",
]
