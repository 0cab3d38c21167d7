"""Summarise a py-spy profile in ``--format raw`` (folded stacks): where the samples go.

    py-spy record --pid PID --duration 20 --rate 200 --threads --gil --format raw -o drain.txt
    python -m bench.folded drain.txt [--top 25]

Prints the share of samples per thread, the database operations run on herald's SQLite thread
(the ``op`` closures of ``SqlStore`` / ``SqlQueue``, each one transaction), and the functions
with the largest inclusive and self share per thread. With ``--gil`` only samples that held
the GIL are recorded: in a process bound by the GIL that is exactly where its time goes.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``function (path/to/module.py:123)`` → ``function (to/module.py)``."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    func, path = m.groups()
    return f"{func} ({'/'.join(path.split('/')[-2:])})"


def thread_name(frame: str) -> str:
    # py-spy --threads puts "thread (TID): NAME" first; without it there is no thread frame.
    if frame.startswith("thread ("):
        name = frame.split(": ", 1)[-1]
        if name.startswith("herald-sqlite"):
            return "sqlite"
        if "worker thread" in name.lower():
            return "threadpool"
        return name
    return "all"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    total = 0
    threads: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = {}
    own: dict[str, Counter[str]] = {}
    for line in args.path.read_text().splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        raw, count = m.group(1).split(";"), int(m.group(2))
        thread = thread_name(raw[0])
        frames = [frame_name(f) for f in (raw[1:] if thread != "all" else raw)] or ["?"]
        total += count
        threads[thread] += count
        for f in set(frames):
            inclusive.setdefault(thread, Counter())[f] += count
        own.setdefault(thread, Counter())[frames[-1]] += count
        op = next((f for f in frames if ".<locals>.op" in f), None)
        if thread == "sqlite":
            if op is not None:
                key = op.split(".<locals>")[0]
            elif any("_begin" in f for f in frames):
                key = "BEGIN IMMEDIATE (per transaction)"
            elif any("commit" in f.lower() for f in frames):
                key = "COMMIT"
            else:
                key = "other (executor, engine.begin, result hand-off)"
            ops[key] += count
    if not total:
        raise SystemExit("no samples")

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    print(f"samples: {total}")
    print("by thread:")
    for name, n in threads.most_common():
        print(f"  {pct(n)}  {name}")
    if ops:
        print("SQLite thread, by database operation (one transaction each):")
        for name, n in ops.most_common(args.top):
            print(f"  {pct(n)}  {name}")
    for name, _ in threads.most_common(3):
        print(f"{name}: inclusive")
        for f, n in inclusive[name].most_common(args.top):
            print(f"  {pct(n)}  {f}")
        print(f"{name}: self")
        for f, n in own[name].most_common(min(args.top, 15)):
            print(f"  {pct(n)}  {f}")


if __name__ == "__main__":
    main()
