from __future__ import annotations

import pytest

from herald.domain.errors import TemplateError
from herald.services.rendering import render_string, render_variant


def test_html_fields_are_autoescaped_and_text_fields_are_not() -> None:
    ctx = {"data": {"name": "<b>Ana</b>"}}
    out = render_variant({"subject": "Hi {{ data.name }}", "html": "<p>{{ data.name }}</p>"}, ctx)
    assert out["subject"] == "Hi <b>Ana</b>"
    assert out["html"] == "<p>&lt;b&gt;Ana&lt;/b&gt;</p>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% for i in range(10**8) %}{% endfor %}",
        "{% for a in range(3000) %}{% for b in range(3000) %}{% endfor %}{% endfor %}",
        "{{ 'a' * 10**9 }}",
        "{{ 'a'.ljust(10**9) }}",
        "{{ 'a'|center(10**9) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ ((10**100)**100)**100 }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{{ lipsum(10**6) }}",
        "{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}",
    ],
)
def test_hostile_templates_are_refused_not_executed(source: str) -> None:
    with pytest.raises(TemplateError):
        render_string(source, {})


def test_ordinary_templates_render() -> None:
    src = (
        "{% for item in data['items'][:3] %}{{ loop.index }}. {{ item|upper }} {% endfor %}"
        "({{ data['items']|length }})"
    )
    assert render_string(src, {"data": {"items": ["a", "b", "c", "d"]}}) == "1. A 2. B 3. C (4)"


def test_dot_lookup_on_dicts_keeps_jinjas_meaning() -> None:
    # The sandbox's dict fast path (HeraldSandbox.getattr) answers what Jinja would: a dict's
    # own attribute first, then its item, else undefined; dunder attributes stay refused.
    ctx = {"data": {"code": "1234", "items": "mine", "nested": {"name": "Ana"}}}
    assert render_string("{{ data.code }}/{{ data.nested.name }}/{{ data['items'] }}", ctx) == "1234/Ana/mine"
    assert render_string("{{ data.items() | list | length }}", ctx) == "3"  # the method, not the item
    assert render_string("[{{ data.missing }}]{{ data.missing is defined }}", ctx) == "[]False"
    assert render_string("{{ data.nested.keys() | list }}", ctx) == "['name']"
    with pytest.raises(TemplateError):
        render_string("{{ data.__class__.__mro__ }}", ctx)
    with pytest.raises(TemplateError):
        render_string("{{ data.missing.deeper }}", ctx)
