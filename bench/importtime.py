"""Where a ``herald`` command's start goes: ``python -X importtime`` of N fresh interpreters,
the medians of what its imports cost (each module's own time), grouped by who imported them
first, beside the median CPU of the whole process.

    python -m bench.importtime [--runs 7] [--cwd FOLDER] -- keys create --scope admin

Run it in a folder where the command succeeds (``--cwd``; its ``herald.toml``). A herald module
counts as its subpackage (the CLI's modules one by one); a library module counts as the
outermost library above it: what typer imports is typer's, even the standard library's, and a
module is counted where it was imported first. Import times are wall time in the child (with
``-X importtime``'s own overhead); the process CPU beyond them is the interpreter's start and
the command itself (typer building its command tree, parsing, the work).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from bench.cli_start import RUNNER


def group_of(module: str) -> str:
    """herald's modules by subpackage (and the CLI's by module), else the package."""
    parts = module.split(".")
    if parts[0] == "herald" and len(parts) > 1:
        return ".".join(parts[:3]) if parts[1] == "entrypoints" else ".".join(parts[:2])
    return parts[0]


def parse(stderr: str) -> dict[str, float]:
    """Milliseconds by group: each module's own time (``import time: self | cumulative |
    name``) goes to its herald group, or else to the outermost library that imported it
    (what typer imports is typer's, what herald imports directly is the library's own)."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = line[len("import time:") :].split("|")
        if not own.strip().isdigit():
            continue  # the header
        entries.append((len(name) - len(name.lstrip()), name.strip(), int(own) / 1000))
    groups: dict[str, float] = defaultdict(float)
    owners: list[tuple[int, str]] = []  # (indent, group) of the ancestors of the current line
    for indent, name, ms in reversed(entries):  # printed children first: reversed, parents first
        while owners and owners[-1][0] >= indent:
            owners.pop()
        if name.startswith("herald"):
            group = group_of(name)
        elif owners and not owners[-1][1].startswith("herald"):
            group = owners[-1][1]  # inside a library: that library's
        else:
            group = group_of(name)
        owners.append((indent, group))
        groups[group] += ms
    return groups


def run(args: list[str], cwd: Path) -> tuple[float, dict[str, float]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", RUNNER, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"herald {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu * 1000, parse(done.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.importtime")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--cwd", type=Path, default=Path.cwd())
    parser.add_argument("args", nargs="+", help="the herald command line (after --)")
    opts = parser.parse_args(argv)
    cpus: list[float] = []
    by_group: dict[str, list[float]] = defaultdict(list)
    for _ in range(opts.runs):
        cpu, groups = run(opts.args, opts.cwd)
        cpus.append(cpu)
        for name, ms in groups.items():
            by_group[name].append(ms)
    rows = sorted(
        ((statistics.median(v + [0.0] * (opts.runs - len(v))), k) for k, v in by_group.items()), reverse=True
    )
    total = sum(ms for ms, _ in rows)
    cpu = statistics.median(cpus)
    print(f"herald {' '.join(opts.args)}: median of {opts.runs}, process CPU {cpu:.0f} ms")
    print("| imported first by | ms (median) |\n|---|---|")
    for ms, name in rows:
        if ms >= 1.0:
            print(f"| {name} | {ms:.0f} |")
    print(f"| all imports (sum of medians) | {total:.0f} |")


if __name__ == "__main__":
    main()
