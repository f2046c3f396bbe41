"""Knowledge-base articles: their rules, and which PostgreSQL text-search configuration (stemming,
stop words) an article's locale reads with. No I/O."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from crm.support.v1 import support_pb2 as pb
from crmkit import contract, text
from crmkit.errors import Invalid, Violation
from trellis_support import domain


class ArticleStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    ARCHIVED = "archived"


# Statuses only callers with the agent scope see.
UNPUBLISHED = frozenset({ArticleStatus.DRAFT, ArticleStatus.ARCHIVED})
# Those who may write articles see them unpublished too.
AGENT_SCOPE = contract.required_scope(
    pb.DESCRIPTOR.services_by_name["SupportService"].methods_by_name["CreateArticle"]
)
DEFAULT_LOCALE = "en"

# ISO 639-1 language -> PostgreSQL's built-in text-search configuration of that language;
# any other language is read word by word ('simple': no stemming, no stop words).
SEARCH_CONFIGS = {
    "ar": "arabic",
    "hy": "armenian",
    "eu": "basque",
    "ca": "catalan",
    "da": "danish",
    "nl": "dutch",
    "en": "english",
    "fi": "finnish",
    "fr": "french",
    "de": "german",
    "el": "greek",
    "hi": "hindi",
    "hu": "hungarian",
    "id": "indonesian",
    "ga": "irish",
    "it": "italian",
    "lt": "lithuanian",
    "ne": "nepali",
    "no": "norwegian",
    "nb": "norwegian",
    "nn": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sr": "serbian",
    "es": "spanish",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
    "yi": "yiddish",
}
FALLBACK_CONFIG = "simple"

_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")


@dataclass(frozen=True)
class ArticleFields:
    title: str = ""
    body: str = ""
    status: ArticleStatus | None = None  # None in a draft: DRAFT on create
    locale: str = ""  # "" in a draft: DEFAULT_LOCALE on create
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Article:
    id: str
    fields: ArticleFields
    version: int
    etag: str
    create_time: datetime
    update_time: datetime
    publish_time: datetime | None


def canonical_locale(value: str) -> str | None:
    """A BCP 47 tag in its usual case ("en-US", "zh-Hant-TW"), or None if it is not one."""
    value = value.strip()
    if not _LOCALE.fullmatch(value):
        return None
    language, *rest = value.split("-")
    parts = [language.lower()]
    for part in rest:
        if len(part) == 2 and part.isalpha():
            parts.append(part.upper())  # region
        elif len(part) == 4 and part.isalpha():
            parts.append(part.title())  # script
        else:
            parts.append(part.lower())
    return "-".join(parts)


def search_config(locale: str) -> str:
    """The text-search configuration an article in `locale` is indexed and searched with."""
    return SEARCH_CONFIGS.get(locale.split("-")[0].lower(), FALLBACK_CONFIG)


def _locale(value: str, path: str, out: list[Violation]) -> str | None:
    found = canonical_locale(value)
    if found is None:
        out.append((path, 'not a language tag, e.g. "en" or "pt-BR"'))
    return found


def locale_filter(value: str, path: str) -> str:
    """A locale a list or search is narrowed to ("" for none); Invalid if it is no tag."""
    if not value.strip():
        return ""
    out: list[Violation] = []
    found = _locale(value, path, out)
    if found is None:
        raise Invalid(out)
    return found


def normalize_article(
    draft: ArticleFields, paths: Collection[str], prefix: str = "article"
) -> ArticleFields:
    """Trim, canonicalise and check the fields named in `paths`; raise Invalid."""
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "title":
                changes[name] = text.required(value, path, out)
            case "body":
                changes[name] = domain.long_text(value, path, out)
            case "locale":
                locale = _locale(value, path, out) if value.strip() else DEFAULT_LOCALE
                changes[name] = locale or value
            case "tags":
                changes[name] = text.tags(value, path, out)
    if out:
        raise Invalid(out)
    return replace(draft, **changes)


def new_article_fields(draft: ArticleFields) -> ArticleFields:
    fields_ = normalize_article(draft, list(ArticleFields.__dataclass_fields__))
    return replace(fields_, status=fields_.status or ArticleStatus.DRAFT)


def finish_update(merged: ArticleFields, paths: Collection[str]) -> ArticleFields:
    if "status" in paths and merged.status is None:
        raise Invalid([("article.status", "must be DRAFT, PUBLISHED or ARCHIVED")])
    return merged
