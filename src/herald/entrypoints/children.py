"""Delivery in child processes for ``herald serve`` (``server.worker_processes``).

One herald process is bound by its GIL to about one core. With ``server.worker_processes = N``,
``herald serve`` keeps the API, routing, the scheduler and the ``in_app`` channel (live inbox
streams are fed in this process) and starts N ``herald worker`` children that send for every
other channel, on the same database. It supervises them:

- each child gets one end of a socket pair. The parent writes the channels it wakes (new
  deliveries routed, retries due) as lines, so that a child claims at once instead of
  polling; the child writes back, as a JSON line, the providers it currently holds unhealthy
  (configuration errors) so that ``/readyz`` of the parent shows them;
- a child that exits while herald runs is logged and started again, after 1 s doubling to
  30 s while it keeps failing within a minute of its start. What it held under lease is
  reclaimed by the scheduler when the lease expires, as after any crash;
- at shutdown the children get SIGTERM and the grace every process gets to finish its sends,
  then SIGKILL;
- a child whose socket closes (its parent died, even by SIGKILL) stops gracefully by itself.

``server.worker_lanes`` narrows what the children send to some priority lanes; ``herald serve``
then sends the other lanes of those channels itself (``shared``): with ``["normal", "low"]``,
critical and high mail never waits for a bulk sender's event loop. With every lane in the
children (the default), it still sends ``server.serve_lanes`` (critical) beside them: what it
routes into them it writes claimed by its own senders. ``server.worker_nice`` (unset: 10 on
PostgreSQL, 0 on SQLite, see ``Settings.children_nice``) lowers the children's CPU priority, so
that on a saturated machine the API, routing and the critical sends of this process get the
cores first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("herald.children")

# Channels a child never serves: in_app's live inbox streams are in the parent.
PARENT_CHANNELS = frozenset({"in_app"})

_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 30.0
_HEALTHY_AFTER = 60.0  # a child that lived this long restarts at once after it dies
_KILL_AFTER_GRACE = 5.0  # seconds beyond the send grace before SIGKILL


@dataclass
class _Child:
    slot: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    restarts: int = 0
    unhealthy: dict[str, Any] = field(default_factory=dict)
    ready: bool = False  # it reported once: built, and its senders started


class WorkerChildren:
    """Starts, wakes, watches and stops the delivery children of one ``herald serve``."""

    def __init__(
        self,
        count: int,
        channels: list[str],
        *,
        config: Path | None,
        grace: float,
        argv: list[str] | None = None,
        lanes: list[str] | None = None,
        nice: int = 0,
        shared: frozenset[str] = frozenset(),
    ) -> None:
        self.channels = channels
        self.lanes = lanes  # the priority lanes the children send (None: every lane)
        self.nice = nice
        self.shared = shared  # channels of the children whose other lanes this process sends
        self.grace = grace
        self._config = config
        self._argv = argv  # tests: what to run instead of `python -m herald worker`
        self._children = [_Child(slot) for slot in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._pending: set[str] = set()
        self._flush_scheduled = False

    # Lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep(child), name=f"herald-worker-child-{child.slot}")
            for child in self._children
        ]

    async def stop(self) -> None:
        self._stopping.set()
        for child in self._children:
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.grace + _KILL_AFTER_GRACE)
            for child in self._children:
                if child.proc is not None and child.proc.returncode is None:
                    log.error("worker.child_killed", pid=child.proc.pid, detail="outlived the grace")
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
            for tk in self._tasks:
                tk.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tk
        self._tasks.clear()

    # Wake-ups (the queue's wake listener) --------------------------------------------------------
    def wake(self, channel: str | None = None) -> None:
        if channel is not None and channel not in self.channels:
            return
        self._pending.add("*" if channel is None else channel)
        if not self._flush_scheduled:
            # Wakes of one loop iteration (a routing pass wakes per delivery) go as one line.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        line = ("*" if "*" in self._pending else ",".join(sorted(self._pending))).encode() + b"\n"
        self._pending.clear()
        for child in self._children:
            w = child.writer
            # A child that does not read its wake-ups for a while would fill the socket: it
            # polls anyway, so a wake-up it would get late is dropped rather than buffered.
            if w is not None and not w.is_closing() and w.transport.get_write_buffer_size() < 65536:
                w.write(line)

    # What /readyz shows ---------------------------------------------------------------------------
    def unhealthy(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for child in self._children:
            merged.update(child.unhealthy)
        return merged

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "slot": c.slot,
                "pid": c.proc.pid if c.proc is not None else None,
                "alive": c.proc is not None and c.proc.returncode is None,
                "restarts": c.restarts,
                "ready": c.ready and c.proc is not None and c.proc.returncode is None,
            }
            for c in self._children
        ]

    # Supervision ----------------------------------------------------------------------------------
    def _command(self, fd: int) -> list[str]:
        base = self._argv or [sys.executable, "-m", "herald", "worker"]
        cmd = [*base, "--channels", ",".join(self.channels), "--no-router", "--wake-fd", str(fd)]
        if self.lanes is not None:
            cmd += ["--lanes", ",".join(self.lanes)]
        if self.nice:
            cmd += ["--nice", str(self.nice)]
        if self._config is not None:
            cmd += ["--config", str(self._config)]
        return cmd

    async def _keep(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST
        while not self._stopping.is_set():
            started = loop.time()
            try:
                rc = await self._run_once(child)
            except OSError as exc:  # could not start the process at all
                log.error("worker.child_start_failed", slot=child.slot, error=str(exc))
                rc = None
            if self._stopping.is_set():
                return
            log.error("worker.child_exited", slot=child.slot, returncode=rc, restarts=child.restarts)
            child.unhealthy = {}
            if loop.time() - started >= _HEALTHY_AFTER:
                backoff = _BACKOFF_FIRST
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            child.restarts += 1

    async def _run_once(self, child: _Child) -> int:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(theirs.fileno()), pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its own copy
        child.proc = proc
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
        except BaseException:
            proc.kill()  # never a child this process cannot wake or watch
            await proc.wait()
            ours.close()
            raise
        child.writer = writer
        log.info("worker.child_started", slot=child.slot, pid=proc.pid, channels=self.channels)
        status = asyncio.create_task(self._read_status(child, reader))
        try:
            return await proc.wait()
        finally:
            child.writer = None
            child.ready = False
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
            writer.close()

    async def _read_status(self, child: _Child, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and isinstance(message.get("unhealthy"), dict):
                    child.unhealthy = message["unhealthy"]
                    child.ready = True


class ParentLink:
    """The child's end: wake-ups in, provider health out; the parent's death stops the child."""

    def __init__(
        self,
        fd: int,
        wake: Callable[[str | None], None],
        unhealthy: Callable[[], dict[str, Any]],
        on_parent_gone: Callable[[], None],
        *,
        report_every: float = 1.0,
    ) -> None:
        self._fd = fd
        self._wake = wake
        self._unhealthy = unhealthy
        self._on_parent_gone = on_parent_gone
        self._report_every = report_every
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=self._fd))
        self._tasks = [
            asyncio.create_task(self._follow(reader), name="herald-parent-wakeups"),
            asyncio.create_task(self._report(writer), name="herald-parent-status"),
        ]

    async def close(self) -> None:
        for tk in self._tasks:
            tk.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tk

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            for name in line.decode(errors="replace").strip().split(","):
                if name == "*":
                    self._wake(None)
                elif name:
                    self._wake(name)
        log.warning("worker.parent_gone", detail="the serve process closed its end; stopping")
        self._on_parent_gone()

    async def _report(self, writer: asyncio.StreamWriter) -> None:
        last: dict[str, Any] | None = None
        try:
            while True:
                now = self._unhealthy()
                if now != last:
                    writer.write(json.dumps({"unhealthy": now}, default=str).encode() + b"\n")
                    await writer.drain()
                    last = dict(now)
                await asyncio.sleep(self._report_every)
        except (ConnectionError, OSError):
            return  # the parent is gone; _follow stops the child
        finally:
            writer.close()
