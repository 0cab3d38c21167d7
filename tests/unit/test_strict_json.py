"""herald.domain.strict_json: what a client may send as JSON, and how a refusal reads."""

from __future__ import annotations

import pytest

from herald.domain.errors import MalformedRequest
from herald.domain.strict_json import MAX_DEPTH, loads, too_deep


def refused(raw: bytes | str) -> MalformedRequest:
    with pytest.raises(MalformedRequest) as info:
        loads(raw)
    assert info.value.status == 400
    return info.value


def test_plain_json_reads_as_json() -> None:
    raw = b'{"a": [1, -2, 3.5, true, false, null, "x\\u00e9\\ud83d\\ude00"], "b": {}}'
    assert loads(raw) == {"a": [1, -2, 3.5, True, False, None, "x\u00e9\U0001f600"], "b": {}}
    assert loads(" [] ") == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_by_name(literal: str) -> None:
    assert literal in refused('{"x": ' + literal + "}").detail


def test_duplicate_keys_are_refused_naming_the_key_at_any_depth() -> None:
    assert "'to' appears twice" in refused('{"to": 1, "to": 2}').detail
    assert "'k' appears twice" in refused('{"data": {"list": [{"k": 1, "k": 1}]}}').detail
    assert loads('[{"k": 1}, {"k": 2}]') == [{"k": 1}, {"k": 2}]  # equal keys in two objects


def test_integers_must_fit_in_64_bits() -> None:
    for ok in (2**63 - 1, 2**64 - 1, -(2**63), 0):
        assert loads(str(ok)) == ok
    for bad in (str(2**64), str(-(2**63) - 1), str(10**30), "9" * 5000):
        assert "64 bits" in refused(bad).detail


def test_a_float_that_overflows_is_refused() -> None:
    assert "too large" in refused("[1e400]").detail
    assert loads("[1e300]") == [1e300]


def test_lone_surrogates_are_refused_pairs_are_text() -> None:
    assert "surrogate" in refused(b'{"a": "\\ud800"}').detail
    assert "surrogate" in refused(b'{"a": "\\udc00x"}').detail
    assert "surrogate" in refused(b'{"\\ud800": 1}').detail
    assert "surrogate" in refused('{"a": "\ud800"}').detail  # a Python str holding one
    assert loads(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}  # an escaped backslash, not an escape


def test_bytes_must_be_utf8_without_bom() -> None:
    assert "UTF-8" in refused(b'{"a": "\xff"}').detail
    assert "UTF-8" in refused(b'{"a": "\xed\xa0\x80"}').detail  # a surrogate written as UTF-8
    refused("\ufeff{}".encode())


def test_nesting_is_bounded_and_the_answer_says_where() -> None:
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert too_deep(loads(at_limit)) is None
    over = '{"data": ' + '{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH + "}"
    exc = refused(over)
    assert f"deeper than {MAX_DEPTH} levels at data.a.a.a.a.a…" in exc.detail
    assert exc.field == "data.a.a"
    assert "deeper" in refused("[" * 100_000 + "]" * 100_000).detail  # the recursion limit
    # Many brackets side by side are not depth.
    wide = "[" + ",".join(["[]"] * 10_000) + "]"
    assert len(loads(wide)) == 10_000


def test_not_json_at_all() -> None:
    for raw in ("", "{", "{'a': 1}", "[1,]", '{"a": 1} x', '"\x01"'):
        assert "not valid JSON" in refused(raw).detail
