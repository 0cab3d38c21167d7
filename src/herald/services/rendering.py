"""Rendering of user templates: compiled once, each render within a budget.

Template authors are untrusted: services/render_sandbox.py hardens Jinja2's immutable sandbox
and services/render_budget.py holds the budget of one render (time, work, depth, sizes). The
functions here are synchronous and must run off the event loop (services/render_pool.py).

Compiled templates are cached by source: compiling is ~70x more expensive than rendering.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.runtime import new_context

from herald.domain.errors import TemplateError
from herald.services import render_budget as rb
from herald.services.render_budget import RenderLimitExceeded, RenderLimits
from herald.services.render_sandbox import HeraldSandbox, _Rewriter

MAX_SOURCE = 256 * 1024  # characters of one template field
# Tags ({{ }}, {% %}) of one field: compiling costs ~0.1 ms of CPU a tag, and inline content is
# compiled when a send is accepted; an honest field has tens, a big newsletter a few hundred.
MAX_TAGS = 500


class RenderBudgetError(TemplateError):
    """A render refused for exceeding its budget; ``limit`` names the configuration key."""

    def __init__(self, detail: str, *, limit: str, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.limit = limit


_limits = RenderLimits()


def configure(limits: RenderLimits) -> None:
    """Set this process's render budget (``[templates]`` in the configuration)."""
    global _limits  # noqa: PLW0603 - one budget per process, set once at start
    _limits = limits


def limits() -> RenderLimits:
    return _limits


_TEXT_ENV = HeraldSandbox(autoescape=False)
_HTML_ENV = HeraldSandbox(autoescape=True)
_TEXT_GLOBALS = dict(_TEXT_ENV.globals)  # compiled templates' globals (make_globals(None))
_HTML_GLOBALS = dict(_HTML_ENV.globals)
_ADDRESS = re.compile(r"\s*(?:object )?at 0x[0-9a-fA-F]+")


def _compile(source: str, html: bool) -> Any:
    env = _HTML_ENV if html else _TEXT_ENV
    if len(source) > MAX_SOURCE:
        raise TemplateError(f"template field over {MAX_SOURCE} characters")
    if source.count("{{") + source.count("{%") > MAX_TAGS:
        raise TemplateError(f"template field with more than {MAX_TAGS} tags ({{{{ }}}} and {{% %}})")
    try:
        tree = env.parse(source)
        tree = _Rewriter().visit(tree)
        code = env.compile(tree)
    except TemplateSyntaxError as exc:
        raise TemplateError(
            f"template syntax error on line {exc.lineno}: {_clean(exc.message or 'invalid syntax')}"
        ) from None
    except (RecursionError, MemoryError):
        raise TemplateError("template nests too deeply to compile") from None
    except SyntaxError:  # the generated Python: Python's own nesting limits
        raise TemplateError("template nests too deeply to compile") from None
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
    if len(source) > _limits.max_output:
        raise _output_error(_limits)
    return source


def compile_check(source: str, *, html: bool = False) -> None:
    """Raise TemplateError when ``source`` does not compile."""
    if not _is_plain(source):
        _compiled(source, html)


def _parent(html: bool, context: dict[str, Any]) -> dict[str, Any]:
    """The variables a render sees: the environment's globals, then ``context`` over them
    (what ``Template.generate`` merges for every call; merged once per variant here)."""
    return {**(_HTML_GLOBALS if html else _TEXT_GLOBALS), **context}


def _clean(message: str) -> str:
    """An error message for a client or a log: no object addresses, bounded."""
    message = _ADDRESS.sub("", message)
    return message if len(message) <= 300 else message[:300] + "..."


def _output_error(lim: RenderLimits) -> RenderBudgetError:
    key = rb.LIMIT_KEYS["max_output"]
    return RenderBudgetError(
        f"template exceeded its render budget: output over {lim.max_output} characters ({key})", limit=key
    )


def render_string(source: str, context: dict[str, Any], *, html: bool = False) -> str:
    if _is_plain(source):
        return _plain(source)
    template = _compiled(source, html)  # outside the budget, as in render_variant
    with rb.budget_for(_limits):
        return _render(template, _parent(html, context))


def _render(template: Any, parent: dict[str, Any]) -> str:
    """One field, under the budget already set for the whole variant."""
    lim = _limits
    try:
        out: list[str] = []
        size = 0
        # Template.generate, without copying the variables (``parent`` is read-only to a
        # template: assignments go to the context's own dict) nor iterating the globals.
        ctx = new_context(template.environment, template.name, template.blocks, parent, shared=True)
        for chunk in template.root_render_func(ctx):
            size += len(chunk)
            if size > lim.max_output:
                raise _output_error(lim)
            out.append(chunk)
        return "".join(out)
    except TemplateError:
        raise
    except RenderLimitExceeded as exc:
        raise RenderBudgetError(f"template exceeded its render budget: {exc}", limit=exc.limit) from None
    except SecurityError as exc:
        raise TemplateError(f"template refused by the sandbox: {_clean(str(exc))}") from None
    except JinjaTemplateError as exc:
        raise TemplateError(f"template error: {_clean(str(exc))}") from None
    except RecursionError:
        key = rb.LIMIT_KEYS["max_depth"]
        detail = f"template exceeded its render budget: recursion too deep ({key})"
        raise RenderBudgetError(detail, limit=key) from None
    except MemoryError:
        key = rb.LIMIT_KEYS["max_value"]
        detail = f"template exceeded its render budget: out of memory ({key})"
        raise RenderBudgetError(detail, limit=key) from None
    except Exception as exc:  # whatever a template's own mistakes raise (TypeError, ValueError ...)
        raise TemplateError(f"template error: {type(exc).__name__}: {_clean(str(exc))}") from None


HTML_FIELDS = frozenset({"html"})


# A variant's plan: (field, compiled template or None for plain text, source, html) per field,
# by the variant's fields (a template version or inline content renders the same fields for
# every recipient: its fields are looked at once, not once per delivery).
_Plan = tuple[tuple[str, Any, str, bool], ...]
_plans: dict[tuple[tuple[str, Any], ...], _Plan] = {}
_PLANS_MAX = 256
_AS_IS = object()


def _plan(variant: dict[str, Any]) -> _Plan | None:
    """The plan of a variant whose values are all hashable (None: it has a mapping or list)."""
    try:
        key = tuple(variant.items())
        plan = _plans.get(key)
    except TypeError:  # a dict value (``data`` maps): not hashable
        return None
    if plan is not None:
        return plan
    steps = []
    for field, value in key:
        if not isinstance(value, str):
            steps.append((field, _AS_IS, "", False))  # a flag (``tracking``): the value itself
            continue
        html = field in HTML_FIELDS
        # Compiled outside the budget: cached (and done at PUT already); a slow first compile
        # on a loaded machine must not fail an honest render.
        steps.append((field, None if _is_plain(value) else _compiled(value, html), value, html))
    if len(_plans) >= _PLANS_MAX:
        _plans.clear()
    plan = _plans[key] = tuple(steps)
    return plan


def render_variant(variant: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Render every string field of a channel variant within one budget; ``data`` maps render
    value by value. Synchronous and bounded: call it off the event loop (render_pool)."""
    plan = _plan(variant)
    if plan is not None:
        out: dict[str, Any] = {}
        parents: dict[bool, dict[str, Any]] = {}
        with rb.budget_for(_limits):
            for field, template, source, html in plan:
                if template is None:
                    out[field] = _plain(source)
                    continue
                if template is _AS_IS:  # equal keys may differ in kind (1 == True): this one's
                    out[field] = variant[field]
                    continue
                parent = parents.get(html)
                if parent is None:
                    parent = parents[html] = _parent(html, context)
                out[field] = _render(template, parent)
        return out
    return _render_mixed(variant, context)


def _render_mixed(variant: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    parents: dict[bool, dict[str, Any]] = {}
    # Compile first, outside the budget: compiling is cached (and was done at PUT already);
    # a slow first compile on a loaded machine must not fail an honest render.
    compiled: dict[tuple[str, bool], Any] = {}
    for field, value in variant.items():
        if isinstance(value, str) and not _is_plain(value):
            html = field in HTML_FIELDS
            compiled[value, html] = _compiled(value, html)
        elif isinstance(value, dict):
            for v in value.values():
                if isinstance(v, str) and not _is_plain(v):
                    compiled[v, False] = _compiled(v, False)
    with rb.budget_for(_limits):

        def render(source: str, html: bool) -> str:
            template = compiled.get((source, html))
            if template is None:
                return _plain(source)
            parent = parents.get(html)
            if parent is None:
                parent = parents[html] = _parent(html, context)
            return _render(template, parent)

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


__all__ = [
    "HTML_FIELDS",
    "RenderBudgetError",
    "RenderLimits",
    "check_variant",
    "compile_check",
    "configure",
    "limits",
    "render_string",
    "render_variant",
]
