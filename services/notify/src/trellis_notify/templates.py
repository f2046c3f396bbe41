"""Email templates: their rules, and rendering them in Jinja2's sandbox.

A tenant writes templates, so they render in `SandboxedEnvironment` (no attribute access to
internals, no unsafe callables, bounded `range`), HTML with autoescaping, and every part's
size is bounded. A template that does not compile is refused when it is saved, naming the
field and the line; one that fails when rendered fails that one email, never the service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from crmkit import text, updates
from crmkit.errors import Invalid, Violation
from trellis_notify import domain
from trellis_notify.audience import TRANSACTIONAL

MAX_RENDERED_CHARS = 1_000_000
_LOCALE = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")

# A value an event does not carry renders empty, however deep the path ({{ event.deal.name }}
# on a ticket's event): one template serves events that differ in what they hold.
_TEXT = SandboxedEnvironment(
    autoescape=False, keep_trailing_newline=True, undefined=ChainableUndefined
)
_HTML = SandboxedEnvironment(
    autoescape=True, keep_trailing_newline=True, undefined=ChainableUndefined
)


class RenderError(ValueError):
    """A template that compiled but could not be rendered with these values."""


@dataclass(frozen=True)
class Content:
    locale: str
    subject: str
    text: str = ""
    html: str = ""


@dataclass(frozen=True)
class TemplateFields:
    name: str = ""
    purpose: str = ""
    default_locale: str = ""
    contents: tuple[Content, ...] = ()


@dataclass(frozen=True)
class Template:
    id: str
    fields: TemplateFields
    version: int
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class Rendered:
    locale: str
    subject: str
    text: str
    html: str


WRITABLE = updates.writable_paths(TemplateFields)


@lru_cache(maxsize=1024)
def _compiled(source: str, html: bool) -> Any:
    return (_HTML if html else _TEXT).from_string(source)


def _compiles(source: str, html: bool, path: str, out: list[Violation]) -> None:
    try:
        _compiled(source, html)
    except TemplateSyntaxError as err:
        out.append((path, f"line {err.lineno}: {err.message}"))


def normalize(draft: TemplateFields, paths: Sequence[str] | frozenset[str]) -> TemplateFields:
    """Check the fields named in `paths` (and the whole record's rules); raise Invalid."""
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    if "name" in paths:
        changes["name"] = text.required(draft.name, "template.name", out)
    if "purpose" in paths:
        changes["purpose"] = domain.purpose(draft.purpose, "template.purpose", out) or TRANSACTIONAL
    if "contents" in paths:
        changes["contents"] = _contents(draft.contents, "template.contents", out)
    if "default_locale" in paths:
        locale = draft.default_locale.strip()
        if locale and not _LOCALE.fullmatch(locale):
            out.append(("template.default_locale", "not a language tag, e.g. en or de-CH"))
        changes["default_locale"] = locale
    if out:
        raise Invalid(out)
    return replace(draft, **changes)


def finish(fields_: TemplateFields) -> TemplateFields:
    """The whole-record rule: the default locale is one of the contents' (the first's if unset)."""
    locales = [c.locale for c in fields_.contents]
    default = fields_.default_locale or (locales[0] if locales else "")
    if default not in locales:
        raise Invalid([("template.default_locale", f"must be one of {', '.join(locales)}")])
    return replace(fields_, default_locale=default)


def _contents(contents: Sequence[Content], path: str, out: list[Violation]) -> tuple[Content, ...]:
    if not contents:
        out.append((path, "needs at least one locale's content"))
    seen: list[str] = []
    kept = []
    for i, content in enumerate(contents):
        at = f"{path}[{i}]"
        locale = content.locale.strip()
        if not _LOCALE.fullmatch(locale):
            out.append((f"{at}.locale", "not a language tag, e.g. en or de-CH"))
        elif locale.lower() in seen:
            out.append((f"{at}.locale", "a second content for this locale"))
        seen.append(locale.lower())
        subject = text.required(content.subject, f"{at}.subject", out)
        if not content.text.strip() and not content.html.strip():
            out.append((at, "needs a text or an HTML body"))
        _compiles(subject, False, f"{at}.subject", out)
        _compiles(content.text, False, f"{at}.text", out)
        _compiles(content.html, True, f"{at}.html", out)
        kept.append(Content(locale, subject, content.text, content.html))
    return tuple(kept)


def pick(fields_: TemplateFields, wanted: str) -> Content:
    """The content for a locale: exact, then the same language, then the default."""
    by_locale = {c.locale.lower(): c for c in fields_.contents}
    wanted = wanted.strip().lower()
    if wanted in by_locale:
        return by_locale[wanted]
    language = wanted.split("-", 1)[0]
    for locale, content in by_locale.items():
        if locale.split("-", 1)[0] == language and language:
            return content
    return by_locale[fields_.default_locale.lower()]


def _render(source: str, html: bool, values: Mapping[str, Any], part: str) -> str:
    try:
        rendered: str = _compiled(source, html).render(values)
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as err:
        raise RenderError(f"{part}: {type(err).__name__}: {err}") from None
    if len(rendered) > MAX_RENDERED_CHARS:
        raise RenderError(f"{part}: longer than {MAX_RENDERED_CHARS} characters once rendered")
    return rendered


def render(fields_: TemplateFields, locale: str, values: Mapping[str, Any]) -> Rendered:
    content = pick(fields_, locale)
    # One line, whatever the values put in it: a header cannot be split by a value.
    subject = " ".join(_render(content.subject, False, values, "subject").split())
    return Rendered(
        locale=content.locale,
        subject=subject,
        text=_render(content.text, False, values, "text") if content.text else "",
        html=_render(content.html, True, values, "html") if content.html else "",
    )


@dataclass(frozen=True)
class Values:
    """What a template sees."""

    contact: Mapping[str, Any] = field(default_factory=dict)
    event: Mapping[str, Any] = field(default_factory=dict)
    vars: Mapping[str, Any] = field(default_factory=dict)
    unsubscribe_url: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "contact": dict(self.contact),
            "event": dict(self.event),
            "vars": dict(self.vars),
            "unsubscribe_url": self.unsubscribe_url,
        }
