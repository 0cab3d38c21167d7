"""The processes of a benchmark: herald and the provider emulator, each in its own process.

Resource figures come from ``/proc`` (Linux): CPU seconds are ``utime + stime`` of the whole
process (every thread), peak RSS is ``VmHWM``. No psutil needed.

Every child gets ``PR_SET_PDEATHSIG = SIGTERM``: if the harness dies, however it dies, the
kernel stops its children, so a benchmark never leaves a server behind. The harness also stops
them itself (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU of a whole process, all threads."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (herald serve's worker children)."""
    out: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def reset_peak_rss() -> None:
    """Restart this process's VmHWM from its current RSS (Linux ``clear_refs`` 5), so that
    one scenario's peak is not the previous scenario's in a multi-scenario run."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def calibration_ms() -> float:
    """The machine's speed right now: best of 3 runs of a fixed pure-Python loop (3M additions).

    Machines of the same kind differ (and one machine drifts) by 2x or more between sessions;
    this figure, recorded in every result line, says which kind of day a run had.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


# Loaded here, in the parent: the child between fork and exec should only make the call.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Usage:
    cpu_s: float  # the process and its children
    peak_rss_mb: float  # the process itself
    children: list[Usage] | None = None  # herald serve's worker children, each
    # --mode split: each process's own CPU by role. ``cpu_s`` is then the sum over the group
    # and ``children`` the processes after the first (the api), so name them.
    by_process: dict[str, float] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu_s": round(self.cpu_s, 2), "peak_rss_mb": self.peak_rss_mb}
        if self.by_process:
            out["cpu_s_by_process"] = {k: round(v, 2) for k, v in self.by_process.items()}
        if self.children:
            out["children"] = [c.as_json() for c in self.children]
            out["peak_rss_mb_with_children"] = round(
                self.peak_rss_mb + sum(c.peak_rss_mb for c in self.children), 1
            )
        return out


class Service:
    """A child process with a log file, a readiness probe and a bounded stop."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._cpu_mark = 0.0
        self._child_marks: dict[int, float] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Service:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  (the harness is single-threaded here)
            )
        return self

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status < 500:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f}s:\n{self.tail()}")

    def mark(self) -> None:
        """Start counting CPU from now (setup work is left out of the figures)."""
        self._cpu_mark = cpu_seconds(self.pid)
        self._child_marks = {}
        for pid in child_pids(self.pid):
            with contextlib.suppress(OSError):
                self._child_marks[pid] = cpu_seconds(pid)

    def usage(self) -> Usage:
        """CPU since :meth:`mark` of the process and its living children (worker processes)."""
        children: list[Usage] = []
        for pid in child_pids(self.pid):
            with contextlib.suppress(OSError):
                cpu = cpu_seconds(pid) - self._child_marks.get(pid, 0.0)
                children.append(Usage(cpu, peak_rss_mb(pid)))
        own = cpu_seconds(self.pid) - self._cpu_mark
        return Usage(own + sum(c.cpu_s for c in children), peak_rss_mb(self.pid), children or None)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def source_version() -> str:
    """The commit herald runs from, ``+dirty`` when ``src/`` has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("HERALD_CONFIG", None)
    for key in list(env):  # the generated herald.toml is the whole configuration
        if key.startswith("HERALD_") and key != "HERALD_PROVIDER_SPECS":
            env.pop(key)
    return env


def emulator_service(
    workdir: Path,
    *,
    latency: float,
    fail_503: float = 0.0,
    fail_429: float = 0.0,
    retry_after: float = 1.0,
    max_seconds: float = 1800.0,
) -> tuple[Service, str]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.emulator",
        "--port",
        str(port),
        "--latency",
        str(latency),
        "--fail-503",
        str(fail_503),
        "--fail-429",
        str(fail_429),
        "--retry-after",
        str(retry_after),
        "--seed",
        "7",
        "--max-seconds",
        str(max_seconds),
    ]
    service = Service("emulator", argv, cwd=REPO, log=workdir / "emulator.log", env=python_env())
    return service, f"http://127.0.0.1:{port}"


class ServiceGroup:
    """Several herald processes measured as one (``--mode split``: ``herald api``, workers, a
    scheduler): the first is the one with the HTTP port; CPU is everyone's; ``children`` in the
    usage are the others, each."""

    def __init__(self, name: str, services: list[Service]) -> None:
        self.name = name
        self.services = services

    @property
    def pid(self) -> int:
        return self.services[0].pid

    def start(self) -> ServiceGroup:
        for s in self.services:
            s.start()
        return self

    async def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        await self.services[0].wait_ready(url, timeout)

    def tail(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {s.name}\n{s.tail(chars // len(self.services))}" for s in self.services)

    def mark(self) -> None:
        for s in self.services:
            s.mark()

    def usage(self) -> Usage:
        each = [s.usage() for s in self.services]
        first, rest = each[0], each[1:]
        by_process = {s.name: u.cpu_s for s, u in zip(self.services, each, strict=True)}
        return Usage(sum(u.cpu_s for u in each), first.peak_rss_mb, rest or None, by_process)

    def alive(self) -> bool:
        return all(s.alive() for s in self.services)

    def stop(self, grace: float = 20.0) -> None:
        for s in reversed(self.services):
            s.stop(grace)
