"""A real herald (uvicorn + the full container) on its own event loop in a thread, so that the
synchronous Playwright API can drive a browser against it from the test's thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from herald.config import Settings
from herald.testing import RecordingProvider
from tests.support.herald import Running, running_herald

T = TypeVar("T")


class HeraldThread:
    def __init__(self, settings: Settings, providers: dict[str, RecordingProvider]) -> None:
        self.settings = settings
        self.providers = providers
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._running: Running | None = None
        self._thread = threading.Thread(target=self._run, name="herald-for-browser", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the test thread by start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_herald(self.settings, providers=self.providers) as h:
            self._running = h
            self._ready.set()
            await self._stop.wait()

    def start(self) -> HeraldThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise AssertionError("herald did not start in 60 s")
        if self._error is not None:
            raise AssertionError(f"herald did not start: {self._error!r}")
        return self

    @property
    def h(self) -> Running:
        assert self._running is not None
        return self._running

    @property
    def base_url(self) -> str:
        return self.h.base_url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on herald's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        async def go() -> Any:
            r = await self.h.client.request(method, path, **kwargs)
            return r.status_code, (r.json() if r.content else None)

        return self.call(go())

    def eventually(self, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


def settings_for(tmp: Path) -> Settings:
    from tests.support.herald import make_settings

    return make_settings(
        tmp, channels={"email": {"providers": ["rec"]}}, retry={"schedule": [0.0, 0.0], "jitter": 0}
    )
