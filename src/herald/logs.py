"""structlog set-up: one event per state change, key=value on a terminal, JSON otherwise.

Nothing secret reaches a log line (services/redact.py masks every event, herald's own and the
standard library's), and an exception is one line: its type, its message and a short stack of
``file:line function``, never the local variables (rich and better-exceptions tracebacks would
print every local: the Authorization header, provider passwords) nor a megabyte of text.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

from herald.redact import redact_event

_STACK_FRAMES = 12
_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")
_MESSAGE_CHARS = 500


def _exc_tuple(value: Any) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    if value is True:
        info = sys.exc_info()
        return None if info[0] is None or info[1] is None else (info[0], info[1], info[2])
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return type(value[1]), value[1], value[1].__traceback__  # the (type, value, tb) of logging
    return None


def compact_exc_info(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace ``exc_info`` by ``error_type``, ``error`` (bounded) and ``frames``: the innermost
    frames as ``file:line function``, without source lines or local variables."""
    text = event.get("event")
    if isinstance(text, str) and _TRACEBACK in text:
        # A traceback formatted into a message (Starlette's lifespan failure): its exception line.
        head, _, tail = text.partition(_TRACEBACK)
        lines = [ln for ln in tail.splitlines() if _EXCEPTION_LINE.match(ln)] or tail.strip().splitlines()
        last = lines[-1] if lines else ""
        event["event"] = (head.strip() + " " + last).strip()[:_MESSAGE_CHARS]
    raw = event.pop("exc_info", None)
    event.pop("exception", None)
    info = _exc_tuple(raw)
    if info is None:
        return event
    exc_type, exc, tb = info
    message = str(exc)
    if len(message) > _MESSAGE_CHARS:
        message = message[:_MESSAGE_CHARS] + "..."
    frames = traceback.extract_tb(tb)[-_STACK_FRAMES:]
    event["error_type"] = exc_type.__qualname__
    event.setdefault("error", message)
    event["frames"] = " < ".join(
        f"{f.filename.rsplit('/', 2)[-1] if '/' in f.filename else f.filename}:{f.lineno} {f.name}"
        for f in reversed(frames)
    )
    return event


def _redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return redact_event(event)


def _one_line(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The console renderer prints values as they are: a newline inside one would split the
    event over several lines."""
    for key, value in event.items():
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            event[key] = value.replace("\r", "\\r").replace("\n", "\\n")
    return event


def configure(level: str = "info", *, json: bool = False, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        compact_exc_info,
        _redact,
    ]
    renderer: structlog.types.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        shared.append(_one_line)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # The standard library's records (uvicorn, asyncio's "exception was never retrieved",
    # drivers) go through the same masking and the same one-line exceptions.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
