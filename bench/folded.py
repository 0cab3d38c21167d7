"""Summarise py-spy's ``--format raw`` (folded stacks): where the samples go.

``python -m bench.folded profile.txt [--top 25] [--match TEXT]`` prints the functions with the
largest inclusive and self share of the samples (idle samples are excluded when py-spy was run
without ``--idle``, so shares are of busy time).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")


def _name(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    m = re.match(r"^(.*) \((.*?):?\d*\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    path = path.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({short})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default=None, help="only stacks containing this text")
    args = parser.parse_args(argv)
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in args.path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        if args.match and args.match not in stack:
            continue
        frames = [_name(f) for f in stack.split(";")]
        total += count
        for f in set(frames):
            inclusive[f] += count
        own[frames[-1]] += count
    print(f"samples: {total}")
    print("inclusive:")
    for f, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("self:")
    for f, n in own.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
