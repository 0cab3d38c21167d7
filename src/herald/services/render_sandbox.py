"""Jinja2's immutable sandbox, hardened for untrusted template authors.

The sandbox refuses ``__class__``-style attributes and mutation of data; on top of it every
step a template takes is charged to the render's budget (services/render_budget.py):

* every ``for`` iteration, every call (macros, ``caller``, recursive loops: nested no deeper
  than ``max_depth``), every filter and method in proportion to what it walks;
* list, tuple and dict literals, ``*``, ``+``, ``%``, ``**`` and ``~`` refuse values past
  ``max_value`` before they are built; widths, padding and repetition past ``max_width``
  (``'{:>999999999}'.format(1)``, ``'%999999999d'|format(1)``, ``center``, ``indent`` ...)
  are refused before the call;
* nothing but text, numbers, lists and mappings can be printed (``{{ range }}``,
  ``{{ joiner() }}``, ``{{ self }}`` would print Python object descriptions);
* ``include``, ``import`` and ``extends`` are refused at compile time (there is no loader).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from herald.domain.errors import TemplateError
from herald.services import render_budget as rb
from herald.services.render_budget import RenderLimitExceeded

_DICT_ATTRIBUTES = frozenset(dir(dict))

# Filters that walk an iterable (a generator is a fine input); the others stringify theirs.
_ITERATING = frozenset(
    {
        "join", "list", "sort", "unique", "first", "last", "length", "count", "sum", "min", "max",
        "map", "select", "reject", "selectattr", "rejectattr", "batch", "slice", "groupby",
        "items", "dictsort", "random", "reverse", "default", "d", "attr",
    }
)  # fmt: skip
_WIDTH_FILTERS = frozenset({"center", "indent", "truncate", "wordwrap", "batch", "slice"})
_QUADRATIC = frozenset({"striptags", "urlize"})
_PRECHECKED = frozenset({"format", "replace", "indent", "wordwrap", "join", "sum"})
_SHORT_ARGS = frozenset({int, float, bool, type(None), str})


def _replace_size(s: str, old: Any, new: Any, count: Any) -> int:
    old_s, new_s = str(old), str(new)
    hits = s.count(old_s) if old_s else len(s) + 1
    if isinstance(count, int) and 0 <= count < hits:
        hits = count
    return len(s) + hits * max(0, len(new_s) - len(old_s))


def _precheck_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Refuse, before the filter runs, what would allocate past the limits; may return the
    value materialised (a generator given to join)."""
    limits = rb.active().limits
    if name in _WIDTH_FILTERS:
        for a in (*args, *kwargs.values()):
            rb.check_width(a)
    if name in _QUADRATIC and isinstance(value, str) and len(value) > limits.max_quadratic:
        raise rb.too_big(f"{name} of a text over {limits.max_quadratic} characters")
    if name == "format" and isinstance(value, str):
        rb.check_percent_format(value)
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        if _replace_size(value, args[0], args[1], args[2] if len(args) > 2 else None) > limits.max_value:
            raise rb.too_big("replace")
    elif name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        pad = width if isinstance(width, int) else len(str(width))
        if len(value) + (value.count("\n") + 1) * pad > limits.max_value:
            raise rb.too_big("indent")
    elif name == "wordwrap" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        if not isinstance(width, int) or width < 1:
            raise SecurityError("wordwrap needs a positive width")
        if len(value) + (len(value) // width + 1) * len(str(wrap)) > limits.max_value:
            raise rb.too_big("wordwrap")
    elif name == "join" and not isinstance(value, str):
        items = list(_iterate(value))
        sep = args[0] if args else kwargs.get("d", "")
        size = rb.weight(items) + len(str(sep)) * len(items)
        if size > limits.max_value:
            raise rb.too_big("join")
        return items
    elif name == "sum":
        start = args[1] if len(args) > 1 else kwargs.get("start", 0)
        if not isinstance(start, int | float):
            raise SecurityError("sum takes a number as its start")
    return value


def _iterate(value: Any) -> Iterator[Any]:
    budget = rb.active()
    for item in value:
        budget.spend()
        yield item


def guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = getattr(fn, "jinja_pass_arg", None)
    skip = 1 if pass_arg is not None else 0  # the context/environment comes before the value
    iterating = name in _ITERATING
    checked = name in _QUADRATIC or name in _WIDTH_FILTERS or name in _PRECHECKED

    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = rb.active()
        value, rest = args[skip], args[skip + 1 :]
        for a in (*rest, *kwargs.values()):
            if type(a) in _SHORT_ARGS and (type(a) is not str or len(a) <= 64):
                continue  # a number or a short text: nothing to check
            if rb.opaque(a):
                raise rb.NotPrintable(f"filter {name} cannot take a function or object as an argument")
            rb.weight(a)
        kind = type(value)
        if (kind is str or kind is Markup) and len(value) <= 64 and not checked:
            budget.spend()  # the common case: a short text through upper, e, default ...
            result = fn(*args, **kwargs)
            if type(result) is str or type(result) is Markup:
                budget.spend(len(result))
            elif isinstance(result, list | tuple | dict):
                budget.spend(rb.weight(result, printing=False))
            return result
        if iterating and (hasattr(value, "__next__") or not hasattr(value, "__len__")):
            budget.spend()  # a generator: its items are charged as they are produced
        else:
            budget.spend(1 + rb.weight(value, printing=not iterating))
        value = _precheck_filter(name, value, rest, kwargs)
        result = fn(*args[:skip], value, *rest, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            budget.spend(rb.weight(result, printing=False))
        return result

    if pass_arg is not None:
        guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]  # jinja's own marker
    return guarded


def _safe_range(*args: int) -> range:
    rng = range(*args)
    limit = rb.active().limits.max_range
    if len(rng) > limit:
        raise RenderLimitExceeded(f"range() is limited to {limit} items", "range")
    return rng


def _budgeted(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = rb.active()
    for item in iterable:
        budget.spend()
        yield item


def _value(value: Any) -> Any:
    """A list, tuple or dict literal: nesting references doubles the size at each level."""
    rb.spend(1 + rb.weight(value, printing=False))
    return value


def _concat(*parts: Any) -> str:
    size = sum(rb.weight(p) for p in parts)
    rb.spend(1 + size)
    if size > rb.active().limits.max_value:
        raise rb.too_big("~")
    return "".join(str(p) for p in parts)


_NUMBERS = frozenset({int, float, bool, type(None)})


def finalize(value: Any) -> Any:
    """What ``{{ ... }}`` prints: text, numbers, lists and mappings of them; never an object.
    Short text and numbers cost nothing here (the loop or call that printed them paid); longer
    text costs its length, so a ``{% set %}`` block cannot gather unbounded output."""
    kind = type(value)
    if kind is str or kind is Markup:
        if len(value) > 64:
            budget = rb.active()
            budget.spend(len(value))
            if len(value) > budget.limits.max_value:
                raise rb.too_big("a printed value")
        return value
    if kind in _NUMBERS:
        return value
    rb.spend(1 + rb.weight(value))
    return value


def _check_str_method(name: str, s: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    limits = rb.active().limits
    for a in (*args, *kwargs.values()):
        if rb.opaque(a):
            raise rb.NotPrintable(f"str.{name} cannot take a function or object as an argument")
    if name in ("format", "format_map"):
        rb.check_brace_format(s)
        size = len(s) + sum(rb.weight(a) for a in (*args, *kwargs.values()))
    elif name in ("center", "ljust", "rjust", "zfill"):
        if args:
            rb.check_width(args[0])
        size = len(s)
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        rb.check_width(tab)
        size = len(s) + s.count("\t") * (tab if isinstance(tab, int) else 8)
    elif name == "replace" and len(args) >= 2:
        size = _replace_size(s, args[0], args[1], args[2] if len(args) > 2 else None)
    elif name == "join" and args:
        items = args[0]
        size = rb.weight(items) + len(s) * (len(items) if hasattr(items, "__len__") else 1)
    elif name in ("striptags", "unescape") and len(s) > limits.max_quadratic:
        raise rb.too_big(f"{name} of a text over {limits.max_quadratic} characters")
    else:
        size = len(s)
    if size > limits.max_value:
        raise rb.too_big(f"str.{name}")
    rb.spend(1 + size)


class HeraldSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape, undefined=Undefined, auto_reload=False, cache_size=0, finalize=finalize
        )
        # lipsum(n) is unbounded and says nothing; the other globals stay callable, never printable.
        self.globals.pop("lipsum", None)
        self.globals["range"] = _safe_range
        self.filters = {name: guard_filter(name, fn) for name, fn in self.filters.items()}
        # The rewriter's own steps: filters are called directly, not through the sandbox's call.
        self.filters.update(herald_iter=_budgeted, herald_concat=_concat, herald_value=_value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``user.data.name`` on the dicts a render sees: the sandbox first asks the dict for an
        # attribute of that name, and the AttributeError it raises cost ~0.4 us a lookup. A
        # plain dict has no attribute outside dir(dict), so for any other name the answer is
        # its item, or undefined, as the sandbox itself would conclude.
        if attribute.startswith("_") and not isinstance(obj, dict):
            # Private and dunder names: refused whether or not the object has one.
            kind = type(obj).__name__
            raise SecurityError(f"access to attribute {attribute!r} of {kind!r} object is unsafe")
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Jinja answers an undefined that prints as nothing: refused outright, an author sees why.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        budget = rb.active()
        limits = budget.limits
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise RenderLimitExceeded("exponent too large", "width")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > 65_536:
                raise RenderLimitExceeded("number too large", "width")
            budget.spend()
            return left**right
        if operator_name == "%":
            if isinstance(left, str):
                rb.check_percent_format(left)
                budget.spend(1 + len(left) + rb.weight(right))
            else:
                budget.spend()
            return operator.mod(left, right)
        if operator_name == "*":
            for side, other in ((left, right), (right, left)):
                if isinstance(side, str | list | tuple) and isinstance(other, int):
                    size = rb.weight(side, printing=False) * other
                    if size > limits.max_value:
                        raise rb.too_big("repetition")
                    budget.spend(1 + max(size, 0))
            both_int = isinstance(left, int) and isinstance(right, int)
            if both_int and left.bit_length() + right.bit_length() > 65_536:
                raise RenderLimitExceeded("number too large", "width")
            budget.spend()
            return operator.mul(left, right)
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            size = rb.weight(left, printing=False) + rb.weight(right, printing=False)
            if size > limits.max_value:
                raise rb.too_big("+")
            budget.spend(1 + size)
        else:
            budget.spend()
        return operator.add(left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = rb.active()
        # The sandbox hands str.format out wrapped (functools.update_wrapper keeps __wrapped__).
        inner = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(inner, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(getattr(inner, "__name__", ""), owner, args, kwargs)
        elif isinstance(owner, list | tuple | dict):
            budget.spend(1 + len(owner))
        else:
            budget.spend()
        if isinstance(__obj, Macro | LoopContext):
            budget.depth += 1
            try:
                if budget.depth > budget.limits.max_depth:
                    raise RenderLimitExceeded(
                        f"macros nest deeper than {budget.limits.max_depth} calls "
                        f"({rb.LIMIT_KEYS['max_depth']})",
                        rb.LIMIT_KEYS["max_depth"],
                    )
                return super().call(__context, __obj, *args, **kwargs)
            finally:
                budget.depth -= 1
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            budget.spend(rb.weight(result, printing=False))
        return result


class _Rewriter(NodeTransformer):
    """Route loops, literals and ``~`` through the budget; refuse what needs a loader."""

    def _refuse(self, node: nodes.Node) -> nodes.Node:
        tag = type(node).__name__.lower().replace("fromimport", "from ... import")
        raise TemplateError(f"template line {node.lineno}: {tag} is not supported in templates")

    visit_Include = visit_Import = visit_FromImport = visit_Extends = _refuse

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "herald_iter", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        first, rest = node.nodes[0], list(node.nodes[1:])
        return nodes.Filter(first, "herald_concat", rest, [], None, None, lineno=node.lineno)

    def _literal(self, node: nodes.Node) -> nodes.Node:
        self.generic_visit(node)
        if getattr(node, "ctx", "load") != "load":
            return node  # an assignment target: ``{% for a, b in ... %}``
        return nodes.Filter(node, "herald_value", [], [], None, None, lineno=node.lineno)

    visit_List = visit_Tuple = visit_Dict = _literal


__all__ = ["HeraldSandbox", "finalize", "guard_filter"]
