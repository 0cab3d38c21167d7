"""Issue 17 part 10: schemathesis against herald's own /openapi.json, on a real `herald serve`.

Every /v1 operation (the live inbox stream excepted: it never ends), positive and negative
data, a fixed seed and a bounded number of examples. It fails on any 5xx, any 2xx for input
the document says is invalid (``negative_data_rejection``), and any 4xx that is not
``application/problem+json`` (tests/integration/schemathesis_hooks.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import HeraldProcess, herald_cli

ROOT = Path(__file__).resolve().parents[2]
CHECKS = "not_a_server_error,negative_data_rejection,problem_json_for_4xx"


@pytest.fixture
def herald(tmp_path: Path) -> Iterator[HeraldProcess]:
    (tmp_path / "herald.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "herald.db"}"\n\n[logging]\nlevel = "warning"\n'
    )
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h = HeraldProcess(tmp_path, key).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_5xx_no_accepted_invalid_input_and_only_problem_4xx(
    herald: HeraldProcess, tmp_path: Path
) -> None:
    st = Path(sys.executable).with_name("st")
    args = [
        str(st), "run", f"{herald.url}/openapi.json",
        "-H", f"Authorization: Bearer {herald.key}",
        "--include-path-regex", "^/v1/",
        "--exclude-path-regex", "/inbox/stream$",
        "--checks", CHECKS,
        "--mode", "all",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "10",
        "--seed", "17",
        "--request-timeout", "20",
        "--max-failures", "100",
        "--output-truncate", "false",
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=580)
    report = done.stdout[-12_000:]
    assert "Test cases:" in done.stdout, report + done.stderr[-3000:]
    assert done.returncode == 0, report
