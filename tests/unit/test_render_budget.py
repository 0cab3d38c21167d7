"""The bounded renderer (services/render_budget.py, render_sandbox.py): what is refused, before
what, and that honest templates render as before."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator

import pytest

from herald.domain.errors import TemplateError
from herald.services import rendering
from herald.services.render_budget import RenderLimits
from herald.services.rendering import RenderBudgetError, check_variant, render_string, render_variant

CTX = {"data": {"name": "Ann", "things": [3, 1, 2], "n": 40}, "user": {"id": "u1"}}


@pytest.fixture
def small_budget() -> Iterator[None]:
    before = rendering.limits()
    rendering.configure(RenderLimits(timeout_ms=200, max_work=5_000))
    try:
        yield
    finally:
        rendering.configure(before)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Hello {{ data.name }}", "Hello Ann"),
        (
            "{{ '%5d'|format(3) }}|{{ '{:>5}'.format(3) }}|{{ 'Order 123456: {}'.format(7) }}",
            "    3|    3|Order 123456: 7",
        ),
        ("{{ data.things|sort|join(',') }}", "1,2,3"),
        ("{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}{{ m(2) }}", "<1><2>"),
        ("{% for t in data.things %}{{ loop.index }}{{ loop.cycle('a', 'b') }}{% endfor %}", "1a2b3a"),
        ("{{ 'ab' * 3 }} {{ [1, 2] + [3] }} {{ 2 ** 10 }} {{ 'x' ~ 1 }}", "ababab [1, 2, 3] 1024 x1"),
        (
            "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}"
            "{{ ns.n }}",
            "3",
        ),
        ("{{ data|tojson }}", '{"n": 40, "name": "Ann", "things": [3, 1, 2]}'),
        ("{{ ('word ' * 3)|wordwrap(5) }}|{{ 'a'|center(5) }}.", "word\nword\nword|  a  ."),
    ],
)
def test_honest_templates_render(source: str, expected: str) -> None:
    assert render_string(source, CTX) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '%999999999d'|format(1) }}",
        "{{ '%999999999d' % 1 }}",
        "{{ '{:{}}'.format(1, 999999999) }}",
        "{{ '%*d' % (999999999, 1) }}",
        "{{ '{:.999999999f}'.format(1.0) }}",
        "{{ 'x' * 999999999 }}",
        "{{ [0] * 999999999 }}",
        "{{ 'x'|center(999999999) }}",
        "{{ 'x'.ljust(999999999) }}",
        "{{ ('x\n' * 100000)|indent(10000) }}",
        "{{ ('x' * 200000)|replace('x', 'yyyy') }}",
        "{{ 'a'.join(['b' * 100000] * 100) }}",
    ],
)
def test_widths_and_repetition_are_refused_before_allocation(source: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(RenderBudgetError):
            render_string(source, CTX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024, peak  # refused before anything big was built


@pytest.mark.parametrize(
    "source",
    [
        "{{ range }}", "{{ cycler }}", "{{ joiner() }}", "{{ self }}", "{{ namespace() }}", "{{ dict }}",
        "{{ ''.upper }}", "{{ range|string }}", "{{ [range]|join }}", "{{ '%s'|format(cycler) }}",
        "{{ '{}'.format(joiner) }}", "{{ range ~ '' }}", "{% for i in [1] %}{{ loop }}{% endfor %}",
        "{{ data.things|map('string') }}", "{{ joiner()|pprint }}", "{{ '%s' % range }}",
    ],
)  # fmt: skip
def test_no_python_object_is_printed(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        render_string(source, CTX)
    assert not re.search(r"0x[0-9a-f]{4,}|<function|<class", info.value.detail)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}", "{{ self._TemplateReference__context }}", "{{ '{0.__class__}'.format(1) }}",
        "{{ joiner()._last }}", "{{ ''|attr('__class__') }}", "{{ cycler.__init__.__globals__ }}",
    ],
)  # fmt: skip
def test_private_attributes_are_refused(source: str) -> None:
    with pytest.raises(TemplateError, match="unsafe"):
        render_string(source, CTX)


@pytest.mark.parametrize("tag", ["{% include 'a' %}", "{% import 'a' as b %}", "{% extends 'a' %}"])
def test_include_import_extends_are_refused_at_compile_time(tag: str) -> None:
    with pytest.raises(TemplateError, match="not supported"):
        check_variant({"text": tag})


def test_each_limit_is_named() -> None:
    cases = {
        "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}": (
            "templates.render_timeout_ms"
        ),
        "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}": "templates.render_max_depth",
        "{{ 'x' * 300000 }}": "templates.render_max_value",
    }
    for source, key in cases.items():
        with pytest.raises(RenderBudgetError) as info:
            render_variant({"text": source}, CTX)
        assert info.value.limit == key and key in info.value.detail, (source, info.value.detail)


def test_the_work_budget_is_configurable(small_budget: None) -> None:
    with pytest.raises(RenderBudgetError, match=r"templates\.render_max_work"):
        render_string("{% for i in range(6000) %}{% endfor %}", CTX)
    assert render_string("{% for i in range(100) %}{% endfor %}ok", CTX) == "ok"


def test_deep_nesting_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        check_variant({"text": "{{ " + "(" * 400 + "1" + ")" * 400 + " }}"})


def test_a_field_with_too_many_tags_is_refused_before_compiling() -> None:
    # Compiling costs ~0.1 ms of CPU a tag, and inline content is compiled at accept.
    with pytest.raises(TemplateError, match="more than 500 tags"):
        check_variant({"text": "{{ a }}" * 35_000})
    check_variant({"text": "{{ a }}" * 500})
