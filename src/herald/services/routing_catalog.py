"""What herald sends and for which events: templates and routing rules, as the API
(``/v1/templates``, ``/v1/rules``) and the operator console change them. One set of checks:
a template or a rule the console saves is one the API would accept, and the other way round.

A template is compiled in the sandbox before it is stored, and rendered once (with the sample
data when given, else without data): a template over its render budget is refused now rather
than failing every send. Compiling and rendering run off the event loop (``render_pool``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from herald.domain.errors import NotFound, TemplateError, ValidationError
from herald.domain.models import Template, User
from herald.domain.rules import Rule, parse_rule
from herald.domain.validation import check_id, check_locale
from herald.ports import CatalogServiceStore, Clock
from herald.services import render_pool
from herald.services.accept import inline_user
from herald.services.catalog import Catalog
from herald.services.lookups import Lookups
from herald.services.rendering import RenderBudgetError, check_variant, render_variant
from herald.services.user_fields import CHANNELS


def _renders(template: Template) -> int:
    """How many renders' time a template's check may take (render_pool.for_request)."""
    return 2 + len(template.channels) + sum(len(chans) for chans in template.locales.values())


def _context(data: dict[str, Any], user: User, notification_id: str, category: str | None) -> dict[str, Any]:
    return {
        "data": data,
        "user": user.template_view(),
        "notification": {"id": notification_id, "category": category, "priority": "normal"},
    }


def _trial(variant: dict[str, Any], data: dict[str, Any] | None, where: str) -> None:
    """Render ``variant`` with the sample data (or none): a template over its budget is
    refused now rather than failing every send; with sample data any render error is too."""
    try:
        render_variant(variant, _context(data or {}, User(id="sample"), "sample", None))
    except RenderBudgetError as exc:
        what = "with the sample data" if data is not None else "without data"
        raise RenderBudgetError(f"{where}: {what}, {exc.detail}", limit=exc.limit, field=where) from None
    except TemplateError as exc:
        if data is not None:
            raise TemplateError(f"{where}: with the sample data, {exc.detail}", field=where) from None


def _compiles(variant: dict[str, Any], where: str) -> None:
    try:
        check_variant(variant)
    except TemplateError as exc:
        raise TemplateError(exc.detail, field=where) from None


def compile_template(template: Template, sample_data: dict[str, Any] | None = None) -> None:
    """Compile every variant and render each once (CPU: run it off the loop)."""
    for ch, variant in template.channels.items():
        if ch not in CHANNELS:
            raise ValidationError(f"unknown channel {ch!r}", field=f"channels.{ch}")
        _compiles(variant, f"channels.{ch}")
    for locale, chans in template.locales.items():
        check_locale(locale, f"locales.{locale}")
        for ch, variant in chans.items():
            if ch not in template.channels:
                raise ValidationError(
                    f"locale {locale} overrides channel {ch!r} that has no default variant",
                    field=f"locales.{locale}.{ch}",
                )
            _compiles(variant, f"locales.{locale}.{ch}")
            _trial(variant, sample_data, f"locales.{locale}.{ch}")
    for ch, variant in template.channels.items():
        _trial(variant, sample_data, f"channels.{ch}")


class RoutingCatalog:
    def __init__(
        self,
        store: CatalogServiceStore,
        clock: Clock,
        catalog: Catalog,
        lookups: Lookups,
        *,
        forget_rule: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.catalog = catalog
        self.lookups = lookups
        self._forget_rule = forget_rule  # (event_type) -> None: the event service's rule cache

    # Templates ---------------------------------------------------------------------------------
    def check_fields(self, template: Template) -> None:
        """The checks that need no compiling: name, category, channels, default locale."""
        check_id(template.name, "name")
        if template.category is not None:
            self.catalog.category(template.category)
        if not template.channels:
            raise ValidationError("a template needs at least one channel", field="channels")
        check_locale(template.default_locale, "default_locale")

    async def check_template(self, template: Template, sample_data: dict[str, Any] | None = None) -> None:
        """Every check of a template, compiling and a trial render included (off the loop)."""
        self.check_fields(template)
        try:
            await render_pool.for_request(compile_template, template, sample_data, renders=_renders(template))
        except RenderBudgetError as exc:
            if sample_data is None or "sample data" in exc.detail:
                raise
            raise RenderBudgetError(f"with the sample data, {exc.detail}", limit=exc.limit) from None

    async def save_template(self, template: Template, sample_data: dict[str, Any] | None = None) -> Template:
        """Check and store a new version of a template; the next send from this process uses it."""
        template.created_at = self.clock.now()
        await self.check_template(template, sample_data)
        stored = await self.store.put_template(template)
        self.lookups.forget_template(template.name)
        return stored

    async def template(self, name: str, version: int | None = None) -> Template | None:
        return await self.store.get_template(name, version)

    async def require_template(self, name: str, version: int | None = None) -> Template:
        template = await self.store.get_template(name, version)
        if template is None:
            raise NotFound(f"template {name!r} does not exist")
        return template

    async def delete_template(self, name: str) -> None:
        deleted = await self.store.delete_template(name)
        self.lookups.forget_template(name)
        if not deleted:
            raise NotFound(f"template {name!r} does not exist")

    async def _preview_user(self, user_id: str | None, inline: dict[str, Any] | None) -> User:
        if user_id is not None:
            found = await self.store.get_user(user_id)
            if found is None:
                raise ValidationError(f"unknown user {user_id!r}", field="user_id")
            return found
        if inline is not None:
            return inline_user({"id": "preview", **inline}, "user")
        return User(id="preview")

    async def render_stored(
        self,
        name: str,
        *,
        data: dict[str, Any],
        user_id: str | None = None,
        user: dict[str, Any] | None = None,
        locale: str | None = None,
        channel: str | None = None,
    ) -> dict[str, Any]:
        """Render a stored template's channel (or all of them) for a user (stored, inline or
        none), as a send would: in the sandbox, off the loop, within the render budget."""
        template = await self.require_template(name)
        who = await self._preview_user(user_id, user)
        loc = locale or who.locale or self.catalog.default_locale
        context = _context(data, who, "preview", template.category)
        rendered: dict[str, Any] = {}
        for ch in [channel] if channel else list(template.channels):
            variant = template.variant(ch, loc)
            if variant is None:
                raise ValidationError(f"template {name!r} has no {ch} variant", field="channel")
            rendered[ch] = await render_pool.for_request(render_variant, variant, context)
        return {"name": name, "version": template.version, "locale": loc, "channels": rendered}

    async def preview(
        self, template: Template, *, data: dict[str, Any], user_id: str | None, locale: str | None
    ) -> dict[str, dict[str, Any]]:
        """Check ``template`` (saved or not) and render every channel of it (the console's
        editor)."""
        await self.check_template(template)
        who = await self._preview_user(user_id or None, None)
        loc = locale or who.locale or self.catalog.default_locale
        context = _context(data, who, "preview", template.category)
        out: dict[str, dict[str, Any]] = {}
        for ch in template.channels:
            variant = template.variant(ch, loc)
            if variant is not None:
                try:
                    out[ch] = await render_pool.for_request(render_variant, variant, context)
                except TemplateError as exc:
                    raise TemplateError(exc.detail, field=f"channels.{ch}") from None
        return out

    # Routing rules -----------------------------------------------------------------------------
    async def save_rule(self, event_type: str, body: Any) -> Rule:
        """Check a rule (its template exists and has a variant for each of its channels), store
        it and drop this process's cached copy."""
        check_id(event_type, "event_type")
        rule = parse_rule(event_type, body, source="api")
        if rule.category is not None:
            self.catalog.category(rule.category)
        template = await self.store.get_template(rule.template)
        if template is None:
            raise ValidationError(f"unknown template {rule.template!r}", field="template")
        missing = [ch for ch in rule.channels if ch not in template.channels]
        if missing:
            raise ValidationError(
                f"template {rule.template!r} has no variant for channels {missing}",
                field="fallback" if rule.fallback else "channels",
            )
        await self.store.put_rule(rule, now=self.clock.now())
        self._forget(event_type)
        return rule

    async def rules(self) -> list[Rule]:
        return await self.store.list_rules()

    async def rule(self, event_type: str) -> Rule | None:
        return await self.store.get_rule(event_type)

    async def require_rule(self, event_type: str) -> Rule:
        rule = await self.store.get_rule(event_type)
        if rule is None:
            raise NotFound(f"no routing rule for event type {event_type!r}")
        return rule

    async def delete_rule(self, event_type: str) -> None:
        if not await self.store.delete_rule(event_type):
            raise NotFound(f"no routing rule for event type {event_type!r}")
        self._forget(event_type)

    def _forget(self, event_type: str) -> None:
        if self._forget_rule is not None:
            self._forget_rule(event_type)
