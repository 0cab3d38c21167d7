"""The benchmark harness still works: every scenario in ``--quick`` mode, as CI runs it.

Each scenario runs ``python -m bench SCENARIO --quick`` in a subprocess (herald, the provider
emulator and the load generator each in their own process, on 127.0.0.1) and must print one
well-formed JSON line per result with nothing lost and nothing duplicated. The figures
themselves are not asserted: they come from full runs on a quiet machine (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ["drain", "accept", "flood_critical", "flaky"]
PERCENTILES = ("p50", "p95", "p99", "max")


def _run(scenario: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--quick", "--max-seconds", "90"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, lines


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_quick_scenario_reports_a_clean_run(scenario: str) -> None:
    done, results = _run(scenario)
    context = f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert results, context
    for r in results:
        assert "error" not in r, context
        assert r["scenario"] == scenario
        assert r["mode"] == "embedded"
        assert r["quick"] is True
        assert r["lost"] == 0, context
        assert r["dup"] == 0, context
        assert r["unexpected"] == 0, context
        assert r["accepted"] == r["received"] > 0, context
        assert _number(r["throughput"]) and r["throughput"] > 0, context
        latency = r["latency_ms"]
        assert all(_number(latency[p]) for p in PERCENTILES), latency
        assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"], latency
        for name in ("herald", "emulator", "loadgen"):
            usage = r["processes"][name]
            assert _number(usage["cpu_s"]) and usage["peak_rss_mb"] > 0, usage
        assert r["settled"] == "done", context
    assert done.returncode == 0, context
    if scenario == "flaky":
        answers = results[0]["emulator_answers"]
        assert answers.get("503", 0) > 0 and answers.get("429", 0) > 0, answers
    if scenario == "flood_critical":
        assert results[0]["critical"] > 0 and results[0]["critical_lost"] == 0
