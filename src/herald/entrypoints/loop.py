"""The event loop long-running herald processes run on.

``herald serve`` and ``herald api`` run under uvicorn, which picks uvloop; ``herald worker`` and
``herald scheduler`` ran on the standard asyncio loop. Profiled in a worker child sending the
drain (issue 23), the standard loop's own machinery (the selector, handles, timer handles) was
about a fifth of the process's samples; uvloop does that work in C. uvloop comes with
``uvicorn[standard]``, a dependency; without it (another platform) the standard loop runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # noqa: PLC0415 - optional: only where it is installed
    except ImportError:  # pragma: no cover - depends on the platform
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
