"""Template rendering in Jinja2's immutable sandbox, with resource limits.

Template authors are untrusted. The sandbox already refuses ``__class__``-style attribute
access and mutation of data; on top of it:

* every ``for`` loop draws from one iteration budget per render (nested loops cannot explode);
* ``range`` is capped, and ``*``, ``**``, ``+`` and ``~`` refuse results past a size limit;
* string padding methods and filters refuse huge widths;
* the output is cut off at a size limit.

Compiled templates are cached by (name, version, channel, locale, field): compiling is ~70x
more expensive than rendering.
"""

from __future__ import annotations

import contextvars
import operator
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined, new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from herald.domain.errors import TemplateError

MAX_ITERATIONS = 10_000
MAX_RANGE = 10_000
MAX_STRING = 256 * 1024
MAX_OUTPUT = 512 * 1024
MAX_WIDTH = 10_000

_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("herald_render_budget")

_DICT_ATTRIBUTES = frozenset(dir(dict))
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "format", "format_map"})


class RenderLimitExceeded(SecurityError):
    pass


def _spend(n: int = 1) -> None:
    budget = _budget.get(None)
    if budget is None:
        return
    budget[0] -= n
    if budget[0] < 0:
        raise RenderLimitExceeded(f"template exceeded {MAX_ITERATIONS} loop iterations")


def _budgeted(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _spend()
        yield item


def _sized(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple) and len(value) > MAX_STRING:
        raise RenderLimitExceeded("template produced a value over the size limit")
    return value


def _concat(*parts: Any) -> str:
    return str(_sized("".join(str(p) for p in parts)))


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise RenderLimitExceeded(f"range() is limited to {MAX_RANGE} items")
    return rng


def _check_widths(args: Iterable[Any]) -> None:
    for a in args:
        if isinstance(a, int) and a > MAX_WIDTH:
            raise RenderLimitExceeded(f"a width or count above {MAX_WIDTH} is not allowed")


def _guard_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = getattr(fn, "jinja_pass_arg", None)
    skip = 2 if pass_arg is not None else 1  # the context/environment, then the filtered value

    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_widths(args[skip:])
        _check_widths(kwargs.values())
        return _sized(fn(*args, **kwargs))

    if pass_arg is not None:
        guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]  # jinja's own marker
    return guarded


class HeraldSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, undefined=Undefined, auto_reload=False, cache_size=0)
        # Keep jinja's harmless globals (dict, cycler, joiner, namespace); lipsum(n) is unbounded.
        self.globals.pop("lipsum", None)
        self.globals.update(range=_safe_range, __herald_iter=_budgeted, __herald_concat=_concat)
        self.filters = {name: _guard_filter(fn) for name, fn in self.filters.items()}

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``user.data.name`` on the dicts a render sees: the sandbox first asks the dict for an
        # attribute of that name, and the AttributeError it raises cost ~0.4 us a lookup (a
        # tenth of the router's time in the drain profile). A plain dict has no attribute
        # outside dir(dict), so for any other name the answer is its item, or undefined, as
        # the sandbox itself would conclude.
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise RenderLimitExceeded("exponent too large")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > 65_536:
                raise RenderLimitExceeded("number too large")
            return _sized(left**right)
        if operator_name == "*":
            for side, other in ((left, right), (right, left)):
                if (
                    isinstance(side, str | list | tuple)
                    and isinstance(other, int)
                    and len(side) * other > MAX_STRING
                ):
                    raise RenderLimitExceeded("template produced a value over the size limit")
            return _sized(operator.mul(left, right))
        return _sized(operator.add(left, right))

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", "")
        if name in _PADDING_METHODS and isinstance(getattr(__obj, "__self__", None), str):
            _check_widths(args)
            _check_widths(kwargs.values())
            if name in {"format", "format_map"}:
                # Format specs can ask for any width ("{:>999999999}"); refuse width digits.
                fmt = __obj.__self__
                if any(len(chunk) > 4 and chunk.isdigit() for chunk in _digit_runs(fmt)):
                    raise RenderLimitExceeded("format width too large")
        return _sized(super().call(__context, __obj, *args, **kwargs))


def _digit_runs(text: str) -> list[str]:
    runs, cur = [], ""
    for ch in text:
        if ch.isdigit():
            cur += ch
        else:
            if cur:
                runs.append(cur)
            cur = ""
    if cur:
        runs.append(cur)
    return runs


class _Rewriter(NodeTransformer):
    """Route every loop through the iteration budget and every ``~`` through the size check."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(
            nodes.Name("__herald_iter", "load"), [node.iter], [], None, None, lineno=node.lineno
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(
            nodes.Name("__herald_concat", "load"), list(node.nodes), [], None, None, lineno=node.lineno
        )


_TEXT_ENV = HeraldSandbox(autoescape=False)
_HTML_ENV = HeraldSandbox(autoescape=True)
_TEXT_GLOBALS = dict(_TEXT_ENV.globals)  # compiled templates' globals (make_globals(None))
_HTML_GLOBALS = dict(_HTML_ENV.globals)


def _compile(source: str, html: bool) -> Any:
    env = _HTML_ENV if html else _TEXT_ENV
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    tree = _Rewriter().visit(tree)
    code = env.compile(tree)
    return env.template_class.from_code(env, code, env.make_globals(None), None)


@lru_cache(maxsize=4096)
def _compiled(source: str, html: bool) -> Any:
    return _compile(source, html)


def _is_plain(source: str) -> bool:
    """No Jinja syntax at all (subjects, plain bodies): rendering is the identity, see _plain."""
    return "{{" not in source and "{%" not in source and "{#" not in source


def _plain(source: str) -> str:
    """What Jinja renders for text without syntax: newlines normalised to ``\n`` and one
    trailing newline dropped (``keep_trailing_newline`` is off); autoescape touches only
    expressions. Skipping Jinja here saves a context and a generator per field."""
    if "\r" in source:
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    if source.endswith("\n"):
        source = source[:-1]
    if len(source) > MAX_OUTPUT:
        raise TemplateError("template output exceeds the size limit")
    return source


def compile_check(source: str, *, html: bool = False) -> None:
    """Raise TemplateError when ``source`` does not compile."""
    if not _is_plain(source):
        _compiled(source, html)


def _parent(html: bool, context: dict[str, Any]) -> dict[str, Any]:
    """The variables a render sees: the environment's globals, then ``context`` over them
    (what ``Template.generate`` merges for every call; merged once per variant here)."""
    return {**(_HTML_GLOBALS if html else _TEXT_GLOBALS), **context}


def render_string(source: str, context: dict[str, Any], *, html: bool = False) -> str:
    if _is_plain(source):
        return _plain(source)
    return _render(_compiled(source, html), _parent(html, context))


def _render(template: Any, parent: dict[str, Any]) -> str:
    token = _budget.set([MAX_ITERATIONS])
    try:
        out: list[str] = []
        size = 0
        # Template.generate, without copying the variables (``parent`` is read-only to a
        # template: assignments go to the context's own dict) nor iterating the globals.
        ctx = new_context(template.environment, template.name, template.blocks, parent, shared=True)
        for chunk in template.root_render_func(ctx):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateError("template output exceeds the size limit")
            out.append(chunk)
        return "".join(out)
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(f"template refused by the sandbox: {exc}") from None
    except UndefinedError as exc:
        raise TemplateError(f"template error: {exc}") from None
    except (
        TypeError,
        ValueError,
        ZeroDivisionError,
        OverflowError,
        AttributeError,
        KeyError,
        IndexError,
    ) as exc:
        raise TemplateError(f"template error: {type(exc).__name__}: {exc}") from None
    except RecursionError:
        raise TemplateError("template recursion too deep") from None
    finally:
        _budget.reset(token)


HTML_FIELDS = frozenset({"html"})


def render_variant(variant: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Render every string field of a channel variant; ``data`` maps render value by value."""
    parents: dict[bool, dict[str, Any]] = {}

    def render(source: str, html: bool) -> str:
        if _is_plain(source):
            return _plain(source)
        parent = parents.get(html)
        if parent is None:
            parent = parents[html] = _parent(html, context)
        return _render(_compiled(source, html), parent)

    out: dict[str, Any] = {}
    for field, value in variant.items():
        if isinstance(value, str):
            out[field] = render(value, field in HTML_FIELDS)
        elif isinstance(value, dict):
            out[field] = {k: render(v, False) if isinstance(v, str) else v for k, v in value.items()}
        else:
            out[field] = value
    return out


def check_variant(variant: dict[str, Any]) -> None:
    for field, value in variant.items():
        if isinstance(value, str):
            compile_check(value, html=field in HTML_FIELDS)
        elif isinstance(value, dict):
            for v in value.values():
                if isinstance(v, str):
                    compile_check(v)
