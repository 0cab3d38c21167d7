"""The benchmark harness still works: every scenario in ``--quick`` mode, as CI runs it.

Each scenario runs ``python -m bench SCENARIO --quick`` in a subprocess (herald, the provider
emulator and the load generator each in their own process, on 127.0.0.1) and must print one
well-formed JSON line per result with nothing lost and nothing duplicated. ``drain`` also runs
in ``--mode scaleout`` (PostgreSQL + Redis + RabbitMQ; skipped when they are not reachable,
unless HERALD_REQUIRE_SERVICES=1), which must leave no schema behind. The figures
themselves are not asserted: they come from full runs on a quiet machine (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ["drain", "accept", "flood_critical", "flaky", "broadcast"]
PERCENTILES = ("p50", "p95", "p99", "max")


def _run(
    scenario: str, mode: str = "embedded", *extra: str
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--quick", "--mode", mode, "--max-seconds", "90", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, lines


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _check(scenario: str, mode: str, *extra: str) -> list[dict[str, Any]]:
    done, results = _run(scenario, mode, *extra)
    context = f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert results, context
    for r in results:
        assert "error" not in r, context
        assert r["scenario"] == scenario
        assert r["mode"] == mode
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
    return results


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_quick_scenario_reports_a_clean_run(scenario: str) -> None:
    results = _check(scenario, "embedded")
    if scenario == "flaky":
        answers = results[0]["emulator_answers"]
        assert answers.get("503", 0) > 0 and answers.get("429", 0) > 0, answers
    if scenario == "flood_critical":
        assert results[0]["critical"] > 0 and results[0]["critical_lost"] == 0
    if scenario == "broadcast":
        r = results[0]
        assert r["notifications"] == 1 and r["subscribers"] == r["accepted"] == r["received"]
        assert r["lost_and_dup_of"].startswith("per subscriber"), r
        assert r["routed_s"] is not None and r["processes"]["herald"]["peak_rss_mb"] > 0


def test_quick_drain_with_worker_children_counts_their_cpu() -> None:
    """``--worker-processes 1``: herald serve sends from a child; its CPU is in herald's."""
    (r,) = _check("drain", "embedded", "--worker-processes", "1")
    herald = r["processes"]["herald"]
    (child,) = herald["children"]
    assert child["cpu_s"] > 0 and child["peak_rss_mb"] > 0, herald
    assert herald["cpu_s"] >= child["cpu_s"], herald
    assert r["tuning"]["worker_processes"] == 1
    assert "worker children" in r["herald_processes"]


def test_quick_drain_on_the_scaleout_stack_cleans_up() -> None:
    from tests.contract.conftest import pg_execute, require_postgres
    from tests.support.rabbitmq import RABBITMQ_URL

    require_postgres()
    broker = urlsplit(RABBITMQ_URL)
    try:  # RabbitMQ reachable (the tests' helper is async; this test only starts a subprocess)
        socket.create_connection((broker.hostname or "127.0.0.1", broker.port or 5672), 3).close()
    except OSError as exc:
        from tests.contract.conftest import service_missing

        service_missing(f"RabbitMQ at {RABBITMQ_URL}", str(exc))
    (r,) = _check("drain", "scaleout")
    backends = r["processes"]["backends"]
    assert backends["postgres_herald"]["backends"] > 0, backends
    assert {"redis", "rabbitmq", "postgres_background"} <= set(backends), backends
    schema = r["scaleout"]["schema"]
    assert schema.startswith("herald_bench_"), r["scaleout"]
    leftovers = pg_execute(f"SELECT nspname FROM pg_namespace WHERE nspname = '{schema}'")
    assert not leftovers, f"schema {schema} was not dropped"


def test_small_transaction_timing_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.small_tx", "--rounds", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rounds"] == 20
    for name in ("accept_commit_ms", "recipients_read_ms", "routed_write_ms"):
        assert _number(result[name]) and result[name] > 0, result


def test_quick_celery_baseline_runs_both_and_cleans_up() -> None:
    """``celery_baseline``: Celery's line and herald's, the ratio on herald's; nothing left behind
    on the shared servers (schema, queue)."""
    pytest.importorskip("celery", reason="the bench extra: pip install 'herald[bench]'")
    from tests.contract.conftest import pg_execute, require_postgres

    require_postgres()
    done, results = _run("celery_baseline")
    context = f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, context
    celery, herald = results
    assert celery["system"] == "celery" and herald["system"] == "herald", context
    for r in (celery, herald):
        assert r["lost"] == 0 and r["dup"] == 0 and r["accepted"] == r["received"] > 0, context
    assert celery["status_rows"] == {"sent": celery["count"] + 1}  # + the warm-up task
    assert herald["vs_celery"]["throughput_ratio"] > 0
    assert len(celery["processes"]["celery"]["children"]) == 8
    schema = celery["namespace"]["schema"]
    assert not pg_execute(f"SELECT nspname FROM pg_namespace WHERE nspname = '{schema}'")
