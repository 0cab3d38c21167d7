"""Strict JSON: RFC 8259 as written, plus the limits herald can store and render.

Every JSON body a client or a producer sends is read here, so that what herald accepts it can
also store (orjson), render (the template sandbox) and give back. Refused, each with a message
that names the offence and where it is:

* ``NaN``, ``Infinity``, ``-Infinity`` (Python's ``json`` reads them; they are not JSON);
* a key twice in one object (``json`` and orjson silently keep the last one);
* a lone UTF-16 surrogate escape (``"\\ud800"``): no UTF-8 text can hold it;
* an integer outside 64 bits, a float that overflows to infinity;
* nesting deeper than :data:`MAX_DEPTH` containers (orjson cannot write past 255; a template
  walking 300 levels is a stall waiting to happen). The check is a byte count first, so an
  ordinary body costs nothing, and a walk only for a body with that many brackets;
* text that is not UTF-8, or a byte-order mark.

A body over the size limit never gets here (``entrypoints/api/limits.py``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from herald.domain.errors import MalformedRequest

MAX_DEPTH = 40  # containers, the body itself counted: 32 levels inside a batch item's ``data``
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson writes (i64 and u64)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Refused(ValueError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


def _int(text: str) -> int:
    if len(text) > 21:  # sign + 20 digits covers every 64-bit integer
        raise _Refused(f"the integer {text[:24]}... does not fit in 64 bits")
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise _Refused(f"the integer {text} does not fit in 64 bits")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"the key {key[:100]!r} appears twice in one object")
            seen.add(key)
    return out


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_constant, parse_int=_int, parse_float=_float
)


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + p)
    return out


def too_deep(value: Any, max_depth: int = MAX_DEPTH) -> list[str | int] | None:
    """The path to the first container nested deeper than ``max_depth``, or None."""
    stack: list[tuple[Any, int, list[str | int]]] = [(value, 1, [])]
    while stack:
        node, depth, path = stack.pop()
        items: Any
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        if depth > max_depth:
            return path
        for k, v in items:
            if isinstance(v, dict | list):
                stack.append((v, depth + 1, [*path, k]))
    return None


def depth_error(path: list[str | int], max_depth: int = MAX_DEPTH) -> MalformedRequest:
    shown = _path(path[:6]) + ("…" if len(path) > 6 else "")
    field = _path(path[:3]) or None
    return MalformedRequest(
        f"the JSON nests deeper than {max_depth} levels at {shown or 'the top'}", field=field
    )


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value of ``raw``, read strictly; :class:`MalformedRequest` (400) naming the offence."""
    try:
        if isinstance(raw, bytes):
            encoded, text = raw, raw.decode("utf-8")
        else:
            encoded, text = raw.encode("utf-8"), raw
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"the body is not UTF-8 text (byte {exc.start})") from None
    except UnicodeEncodeError:
        raise MalformedRequest("the text holds a lone UTF-16 surrogate, which is not Unicode") from None
    try:
        value = _DECODER.decode(text)
    except _Refused as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc.detail}") from None
    except RecursionError:
        raise MalformedRequest(f"the JSON nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # json.JSONDecodeError, and int()'s digit limit
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(encoded):
        # orjson reads surrogate pairs and refuses a lone one, which json lets through.
        try:
            orjson.loads(encoded)
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if encoded.count(b"[") + encoded.count(b"{") > max_depth:
        path = too_deep(value, max_depth)
        if path is not None:
            raise depth_error(path, max_depth)
    return value
