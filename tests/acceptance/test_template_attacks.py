"""A hostile template author against a real `herald serve` (issue 17, parts 1-3).

Every payload of the corpus is stored behind ``{% if data.go %}`` (its trial render at PUT has
no data) and then previewed with ``{"go": true}``: each preview answers a 4xx problem+json
within 1 s, executes nothing, prints no Python object address nor configuration value, while
``/healthz`` keeps answering within 100 ms; herald's peak RSS grows by less than 50 MB over
the whole corpus. The same payloads given as sample data at PUT are refused with a 422 that
says so. A send with an over-budget template fails ``render_error`` while other deliveries
flow, and kill -9 with such a send pending does not stall the restarted herald.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import HeraldProcess, herald_cli, write_config
from tests.support.smtp import SmtpTestServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stack")]

SMTP_PASSWORD = "corpus-smtp-password-7f3a9c"
AUTH_SECRET = "corpus-auth-secret-5b2e81d4c0"
MARKER = "herald-attack-marker"

# Each entry: a template body. They are rendered with data {"go": true, "n": 40}.
CORPUS: list[str] = [
    # recursion and exponential macros
    "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}",
    "{% macro f(n) %}{% for i in range(50) %}{{ f(n) }}{% endfor %}{% endmacro %}{{ f(1) }}",
    "{% macro a() %}{{ caller() }}{{ caller() }}{% endmacro %}"
    "{% macro b(n) %}{% call a() %}{{ b(n-1) if n else '' }}{% endcall %}{% endmacro %}{{ b(data.n) }}",
    "{% for x in [[[[1]]]] recursive %}{{ loop([x, x]) }}{% endfor %}",
    # heavy loops within the iteration count
    "{% set l = range(10000)|list %}{% for i in range(1000) %}{{ l|sort|join|length }}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{% for i in range(10000) %}{{ (range(10000)|list|reverse|list)|unique|list|length }}{% endfor %}",
    "{% set s = 'ab' * 100000 %}{% for i in range(10000) %}{{ 'zz' in s }}{% endfor %}",
    "{% for i in range(100000000) %}x{% endfor %}",
    # widths, padding, repetition: refused before allocation
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '%999999999d'|format(1) }}",
    "{{ '{:{}}'.format(1, 999999999) }}",
    "{{ '{0:{1}}'.format(1, [999999999]) }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '%.999999999f' % 1.0 }}",
    "{{ '{:.999999999f}'.format(1.0) }}",
    "{{ 'x' * 999999999 }}",
    "{{ [1, 2] * 999999999 }}",
    "{{ 'x'|center(999999999) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ 'x'.zfill(999999999) }}",
    "{{ 'a\tb'.expandtabs(999999999) }}",
    "{{ ('x\n' * 100000)|indent(10000) }}",
    "{{ ('x ' * 100000)|wordwrap(1, wrapstring='y' * 100000) }}",
    "{{ 'x'|truncate(999999999) }}",
    "{{ [1]|batch(999999999, 'x')|list }}",
    "{{ ('x' * 200000)|replace('x', 'yyyy') }}",
    "{{ 'a'.join(['b' * 100000] * 100) }}",
    "{{ 10 ** (10 ** 10) }}",
    "{{ ((10 ** 100) ** 100) * ((10 ** 100) ** 100) * ((10 ** 100) ** 100) }}",
    "{{ (10 ** 100) ** 100 }}",
    # huge output and exponential structures
    "{% for i in range(10000) %}{{ 'x' * 100000 }}{% endfor %}",
    "{% set a = ['x' * 200000] %}{% set b = [a, a] %}{% set c = [b, b] %}{% set d = [c, c] %}{{ d }}",
    "{% set a = ['x' * 100000] %}{% set b = [a,a,a,a] %}{% set c = [b,b,b,b] %}{{ c == c }}",
    "{% set s %}{% for i in range(10000) %}{{ 'y' * 10000 }}{% endfor %}{% endset %}{{ s }}",
    "{{ ('<>' * 100000)|striptags }}",
    # globals must not print Python objects
    "{{ range }}",
    "{{ cycler }}",
    "{{ joiner() }}",
    "{{ self }}",
    "{{ namespace() }}",
    "{{ lipsum() }}",
    "{{ dict }}",
    "{{ ''.upper }}",
    "{{ data.items }}",
    "{{ range|string }}",
    "{{ [range]|join }}",
    "{{ '%s'|format(cycler) }}",
    "{{ '%s' % joiner }}",
    "{{ '{}'.format(namespace) }}",
    "{{ range ~ '' }}",
    "{{ (data.x|default([1, 2]))|map('string') }}",
    "{% for i in [1] %}{{ loop }}{% endfor %}",
    "{% for i in [1] %}{{ loop.cycle }}{% endfor %}",
    "{% for i in [1] %}{{ loop.cycle(range, dict) }}{% endfor %}",
    "{{ cycler(1, 2).next }}",
    "{{ joiner('x')|pprint }}",
    "{{ [self]|pprint }}",
    # attribute escapes, cycler/joiner internals, format string attacks
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ cycler.__init__.__globals__.os.system('touch " + MARKER + "') }}",
    "{{ joiner()._last }}",
    "{{ namespace().__init__.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
    "{{ '{0[0].__class__}'.format([1]) }}",
    "{{ ''|attr('__class__') }}",
    "{{ data|attr('__init__') }}",
    "{{ lipsum.__globals__ }}",
    "{{ config.items() }}",
    # include / import / extends of other templates
    "{% include 'welcome' %}",
    "{% import 'welcome' as w %}{{ w }}",
    "{% from 'welcome' import x %}{{ x }}",
    "{% extends 'welcome' %}",
    # deep nesting
    "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
    "{% if 1 %}" * 200 + "x" + "{% endif %}" * 200,
    "{{ data.n }}" * 35_000,  # compiling ~0.1 ms a tag: refused before
]


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


class HealthProbe:
    """Polls /healthz from a thread while a request runs: every latency, the slow ones apart.
    A probe over the threshold is retried at once, twice; it counts as a failure when the
    retries are slow too: the loop stalled for 300 ms or more (a scheduling hiccup of a loaded
    machine is not a stalled loop; the count of slow probes is bounded as well)."""

    def __init__(self, url: str, threshold: float = 0.1) -> None:
        self.url, self.threshold = url, threshold
        self.latencies: list[float] = []
        self.slow: list[float] = []
        self.failures: list[tuple[float, ...]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _probe(self, client: httpx.Client) -> float:
        start = time.perf_counter()
        r = client.get("/healthz")
        elapsed = time.perf_counter() - start
        assert r.status_code == 200
        self.latencies.append(elapsed)
        return elapsed

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                first = self._probe(client)
                if first > self.threshold:
                    self.slow.append(first)
                    streak = [first]
                    while len(streak) < 3 and streak[-1] > self.threshold:
                        streak.append(self._probe(client))
                    if all(t > self.threshold for t in streak):
                        self.failures.append(tuple(streak))
                self._stop.wait(0.01)

    def __enter__(self) -> HealthProbe:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.latencies and time.monotonic() < deadline:
            time.sleep(0.005)  # polling before the first request
        return self

    def count_between(self, before: int) -> int:
        return len(self.latencies) - before

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)


LEAKS = re.compile(r"0x[0-9a-fA-F]{4,}|<function|<class|<built-in|<bound method|<module|object at")


def _assert_no_leak(text: str, tmp: Path) -> None:
    assert not LEAKS.search(text), text[:500]
    for secret in (SMTP_PASSWORD, AUTH_SECRET, str(tmp)):
        assert secret not in text, text[:500]


@pytest.fixture
def herald(tmp_path: Path, smtp_server: SmtpTestServer) -> Any:
    write_config(
        tmp_path,
        smtp_server.port,
        extra=f'\n[auth]\nsecret = "{AUTH_SECRET}"\n',
    )
    toml = (tmp_path / "herald.toml").read_text()
    toml = toml.replace("timeout = 10\n", f'timeout = 10\npassword = "{SMTP_PASSWORD}"\n', 1)
    (tmp_path / "herald.toml").write_text(toml)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h = HeraldProcess(tmp_path, key).start()
    try:
        yield h
    finally:
        h.stop()


def test_attack_corpus_against_a_running_herald(herald: HeraldProcess, tmp_path: Path) -> None:
    assert len(CORPUS) >= 40
    h = herald
    assert h.proc is not None
    pid = h.proc.pid
    previews: list[float] = []
    slow_previews: list[tuple[str, float]] = []
    with h.client() as c:
        ok = {"channels": {"email": {"subject": "hi", "text": "Hello {{ data.name }}"}}}
        assert c.put("/v1/templates/welcome", json=ok).status_code == 200
        # Warm up (first compile and render, the render threads) before the memory baseline.
        assert c.post("/v1/templates/welcome/render", json={"data": {"name": "x"}}).status_code == 200
        rss_before = _rss_kb(pid, "VmRSS")
        probe = HealthProbe(h.url)
        probes_during: list[int] = []  # how many probes answered while each preview ran
        with probe:
            for i, payload in enumerate(CORPUS):
                _attack(c, i, payload, tmp_path, probe, previews, slow_previews, probes_during)
        peak_after = _rss_kb(pid, "VmHWM")
        # Herald still serves an honest template.
        r = c.post("/v1/templates/welcome/render", json={"data": {"name": "Ann"}})
        assert r.status_code == 200 and r.json()["channels"]["email"]["text"] == "Hello Ann"
    growth_mb = (peak_after - rss_before) / 1024
    print(
        f"\ntemplate attack corpus: payloads={len(CORPUS)} previews={len(previews)} "
        f"max_preview={max(previews) * 1000:.0f}ms healthz_probes={len(probe.latencies)} "
        f"(during previews: {sum(probes_during)}) "
        f"max_healthz={max(probe.latencies) * 1000:.0f}ms slow_healthz={len(probe.slow)} "
        f"rss_before={rss_before // 1024}MB peak_growth={growth_mb:.1f}MB"
    )
    assert not (tmp_path / MARKER).exists() and not Path(MARKER).exists()
    assert slow_previews == [], slow_previews
    assert probe.failures == [], probe.failures
    # A hostile preview blocking the loop would make a slow probe each (74 previews); a loaded
    # machine makes a few (its retry is fast), more on the scale-out stack whose servers share
    # the cores.
    assert len(probe.slow) <= len(previews) // 10, probe.slow
    assert growth_mb < 50, growth_mb


def _attack(
    c: httpx.Client,
    i: int,
    payload: str,
    tmp_path: Path,
    probe: HealthProbe,
    previews: list[float],
    slow_previews: list[tuple[str, float]],
    probes_during: list[int],
) -> None:
    """Store one payload, preview it with the data that arms it, then PUT it with that data."""
    body = {"channels": {"email": {"subject": "s", "text": "{% if data.go %}" + payload + "{% endif %}"}}}
    start = time.perf_counter()
    r = c.put(f"/v1/templates/atk{i}", json=body)
    put_elapsed = time.perf_counter() - start
    _assert_no_leak(r.text, tmp_path)
    if r.status_code != 200:  # refused at compile time (include, nesting ...)
        assert 400 <= r.status_code < 500, (payload, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert put_elapsed < 1.0, (payload, put_elapsed)
        return
    before = len(probe.latencies)
    start = time.perf_counter()
    r = c.post(f"/v1/templates/atk{i}/render", json={"data": {"go": True, "n": 40}})
    elapsed = time.perf_counter() - start
    probes_during.append(len(probe.latencies) - before)
    previews.append(elapsed)
    assert 400 <= r.status_code < 500, (payload, r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/problem+json", payload
    _assert_no_leak(r.text, tmp_path)
    if elapsed >= 1.0:
        slow_previews.append((payload, elapsed))
    # The same payload as sample data at PUT: refused, and the 422 says so.
    r = c.put(f"/v1/templates/atk{i}", json={**body, "sample_data": {"go": True, "n": 40}})
    assert r.status_code == 422, (payload, r.status_code, r.text[:300])
    assert "with the sample data" in r.json()["detail"], r.text
    _assert_no_leak(r.text, tmp_path)


def _deliveries(c: httpx.Client, notification_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = c.get(f"/v1/notifications/{notification_id}").json()
        deliveries = body.get("deliveries") or []
        if deliveries and all(
            d["status"] in ("sent", "delivered", "failed", "dead", "skipped") for d in deliveries
        ):
            return list(deliveries)
        time.sleep(0.1)
    raise AssertionError(f"{notification_id} not final after {timeout}s: {body}")


BOMB = (
    "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
    "{{ f(data.depth|default(0)) }}"
)


def _setup(c: httpx.Client) -> None:
    assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
    bomb = {"channels": {"email": {"subject": "s", "text": BOMB}}}
    assert c.put("/v1/templates/bomb", json=bomb).status_code == 200  # harmless without data
    ok = {"channels": {"email": {"subject": "hi", "text": "Hello {{ data.name }}"}}}
    assert c.put("/v1/templates/welcome", json=ok).status_code == 200


def _send(c: httpx.Client, template: str, data: dict[str, Any]) -> str:
    r = c.post("/v1/notifications", json={"to": "u1", "template": template, "data": data})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _assert_render_error(delivery: dict[str, Any]) -> None:
    assert delivery["status"] == "failed" and delivery["reason"] == "render_error", delivery
    assert "templates.render_" in (delivery.get("error") or ""), delivery  # names the limit
    assert delivery["attempt_count"] == 0  # permanent: never retried, never sent


def test_send_with_an_over_budget_template_fails_while_others_flow(
    herald: HeraldProcess, smtp_server: SmtpTestServer
) -> None:
    with herald.client() as c:
        _setup(c)
        bad = [_send(c, "bomb", {"depth": 40}) for _ in range(3)]
        good = [_send(c, "welcome", {"name": f"n{i}"}) for i in range(10)]
        for nid in bad:
            (d,) = _deliveries(c, nid)
            _assert_render_error(d)
        for nid in good:
            (d,) = _deliveries(c, nid)
            assert d["status"] in ("sent", "delivered"), d
        assert c.get("/healthz").status_code == 200
    assert len(smtp_server.handler.received) == 10


@pytest.mark.parametrize("pending_in", ["api_only", "serve_killed_while_routing"])
def test_kill_9_with_an_over_budget_send_pending_does_not_stall(
    tmp_path: Path, smtp_server: SmtpTestServer, pending_in: str
) -> None:
    write_config(tmp_path, smtp_server.port)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    first = HeraldProcess(tmp_path, key, role="api" if pending_in == "api_only" else "serve").start()
    try:
        with first.client() as c:
            _setup(c)
            bad = [_send(c, "bomb", {"depth": 40}) for _ in range(3)]
            good = _send(c, "welcome", {"name": "before"})
        first.kill()  # kill -9: routing leases (if any) are left behind
    finally:
        first.stop()
    second = HeraldProcess(tmp_path, key).start()
    try:
        with second.client() as c:
            for nid in bad:
                (d,) = _deliveries(c, nid, timeout=60)
                _assert_render_error(d)
            (d,) = _deliveries(c, good, timeout=60)
            assert d["status"] in ("sent", "delivered"), d
            # The restarted herald keeps serving and sending.
            start = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            assert time.perf_counter() - start < 1.0
            after = _send(c, "welcome", {"name": "after"})
            (d,) = _deliveries(c, after)
            assert d["status"] in ("sent", "delivered"), d
    finally:
        second.stop()
