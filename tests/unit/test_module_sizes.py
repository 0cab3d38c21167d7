"""Issue 18: no module in src/herald grows into a room everyone walks through.

A module over 600 lines is split by role (ARCHITECTURE.md says where each behaviour lives);
this test names the ones that crossed the line.
"""

from __future__ import annotations

from pathlib import Path

import herald

LIMIT = 600
SRC = Path(herald.__file__).resolve().parent


def test_no_module_in_src_herald_is_over_600_lines() -> None:
    sizes = {
        p.relative_to(SRC).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in SRC.rglob("*.py")
    }
    assert len(sizes) > 100, "the walk found herald's modules"
    too_big = {name: n for name, n in sizes.items() if n > LIMIT}
    assert too_big == {}, f"modules over {LIMIT} lines: {too_big}"
