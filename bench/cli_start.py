"""How long ``herald`` commands take to start: median wall and CPU of N runs, old and new code
interleaved run by run (``--old`` is another checkout's ``src``, put first on ``PYTHONPATH``).

    python -m bench.cli_start [--runs 10] [--old OTHER/src] [--compile] [--output results.jsonl]

Each code version gets its own folder with a ``herald.toml`` (SQLite) whose schema is created by
one unmeasured ``herald keys create`` first (which also records the configuration as validated,
in the folder's own cache: ``XDG_CACHE_HOME``, herald/config_source.py); then every round runs
each command once per code version, so that both see the same machine. One JSON line per (code,
command) with the median, min and max of the wall and CPU seconds, ``calibration_ms`` and the
CPU the rest of the machine used meanwhile (``others_cpu_s``).

An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` compiles herald's own modules at
every start (an installed wheel does not). ``--compile`` lets the unmeasured first run write
their bytecode; each line says whether the measured runs found it (``herald_bytecode``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import calibration_ms, machine_busy_seconds

COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "keys create": ["keys", "create", "--scope", "admin", "--name", "x"],
}
RUNNER = "import sys; from herald.entrypoints.cli import main; sys.argv[0] = 'herald'; main()"


def _env(src: str | None, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")}
    env["XDG_CACHE_HOME"] = str(folder / "cache")  # the validated-configuration marker
    if src:
        env["PYTHONPATH"] = src
    else:
        env.pop("PYTHONPATH", None)
    return env


def _herald_bytecode(src: str | None) -> bool:
    """Whether the herald package that code runs has compiled bytecode for the CLI module."""
    if src:
        package = Path(src) / "herald"
    else:
        spec = importlib.util.find_spec("herald")
        assert spec is not None and spec.origin is not None
        package = Path(spec.origin).parent
    return any((package / "entrypoints" / "__pycache__").glob("cli.*.pyc"))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"herald {' '.join(args)} failed: {done.stderr.strip()}")
    return wall, cpu


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_start")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--old", help="the src folder of the code to compare with (PYTHONPATH)")
    parser.add_argument("--compile", action="store_true", help="let the first run write herald's bytecode")
    parser.add_argument("--output", type=Path)
    opts = parser.parse_args(argv)
    codes: dict[str, str | None] = {"new": None}
    if opts.old:
        codes = {"old": opts.old, "new": None}
    with tempfile.TemporaryDirectory(prefix="herald-cli-start-") as tmp:
        folders: dict[str, Path] = {}
        for code in codes:
            folder = Path(tmp) / code
            folder.mkdir()
            (folder / "herald.toml").write_text(
                f'[database]\nurl = "sqlite:///{folder / "herald.db"}"\n', encoding="utf-8"
            )
            first = _env(codes[code], folder)
            if opts.compile:
                first.pop("PYTHONDONTWRITEBYTECODE", None)
            run_once(COMMANDS["keys create"], folder, first)  # creates the schema
            folders[code] = folder
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        calibration, load0 = calibration_ms(), os.getloadavg()[0]
        busy0, ours0 = machine_busy_seconds(), _children_cpu()
        for _ in range(opts.runs):
            for command, args in COMMANDS.items():
                for code, src in codes.items():
                    samples.setdefault((code, command), []).append(
                        run_once(args, folders[code], _env(src, folders[code]))
                    )
        others = max(0.0, machine_busy_seconds() - busy0 - (_children_cpu() - ours0))
        calibration_end, load1 = calibration_ms(), os.getloadavg()[0]
    for (code, command), runs in samples.items():
        result: dict[str, Any] = {
            "scenario": "cli_start",
            "code": code,
            "command": f"herald {command}",
            "runs": len(runs),
            "wall_s": _summary([w for w, _ in runs]),
            "cpu_s": _summary([c for _, c in runs]),
            "calibration_ms": {"start": calibration, "end": calibration_end},
            "others_cpu_s": round(others, 2),
            "load_avg_1m": {"start": round(load0, 2), "end": round(load1, 2)},
            "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
            "herald_bytecode": _herald_bytecode(codes[code]),
        }
        line = json.dumps(result, separators=(",", ":"))
        print(line, flush=True)
        if opts.output is not None:
            with opts.output.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
