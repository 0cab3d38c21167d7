"""Rendering off the event loop: user templates render in worker threads, never on the loop
that serves the API and drives the workers.

A thread cannot be killed, so each render bounds itself cooperatively (render_budget.py:
wall time, work, depth and sizes, checked before every step, and no single step long); the
thread is then free again within about the time budget. Measured against a process pool
(bench/render_offloop.py, bench/reports/i17a.md): a thread hop costs tens of microseconds, a
process round trip (pickling the template and its context) several times that, and a process
would hold one more interpreter per worker; the budget makes killing unnecessary.

Two pools: previews and template checks (requests) use one, routing and digests the other,
so a burst of previews cannot delay routing, nor routing a preview.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from herald.domain.errors import TemplateError
from herald.services import rendering

T = TypeVar("T")

_REQUESTS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="herald-render-api")
_ROUTING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-render-route")


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))


async def for_request(fn: Callable[..., T], *args: Any, renders: int = 1) -> T:
    """Run ``fn`` (``renders`` renders, or template checks) for an API request, answering within
    about their time budget even should the thread overrun it (it stops at its next check)."""
    grace = renders * rendering.limits().timeout_ms / 1000 + 0.4
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def run() -> T:
        loop.call_soon_threadsafe(started.set)
        return fn(*args)

    future = loop.run_in_executor(_REQUESTS, run)
    # The grace counts from when a thread takes the work: queued behind a render that is still
    # using up its own budget, an honest template is not refused for the wait.
    waiting: asyncio.Future[Any] = asyncio.ensure_future(started.wait())
    pending: list[asyncio.Future[Any]] = [future, waiting]
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    try:
        return await asyncio.wait_for(future, grace)
    except TimeoutError:
        key = "templates.render_timeout_ms"
        raise rendering.RenderBudgetError(
            f"template exceeded its render budget: render time over {grace:.1f} s ({key})", limit=key
        ) from None


async def for_routing(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` (routing's delivery building, a digest render) on the routing thread."""
    return await _run(_ROUTING, fn, *args)


__all__ = ["TemplateError", "for_request", "for_routing"]
