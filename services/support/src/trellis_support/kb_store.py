"""SQL of the knowledge base: articles, and PostgreSQL full-text search over them.

Each article is indexed with the text-search configuration of its locale's language (its
`search_config`; the `search` column is generated from it, the title weighted above the
body), and a query is parsed with the same configuration for each article it is compared
with, so "passwords" finds "password" in English and "Passwörter" finds "Passwort" in German.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crmkit import db, updates
from crmkit.errors import NotFound, check_etag
from crmkit.ids import new_id
from trellis_support import kb
from trellis_support.kb import Article, ArticleFields, ArticleStatus
from trellis_support.rows import known_id

_COLUMNS = (
    "a.id, a.title, a.body, a.status, a.locale, a.tags, a.version, a.etag, a.create_time,"
    " a.update_time, a.publish_time"
)
# Every known configuration: a search without a locale reads the query in each of them.
_ALL_CONFIGS = sorted({*kb.SEARCH_CONFIGS.values(), kb.FALLBACK_CONFIG})
# Ranks are floats; pages are keyed by the rank scaled to an integer so a page token holds it
# exactly.
_RANK_SCALE = 1_000_000_000
_HEADLINE = "StartSel=<mark>, StopSel=</mark>, MaxWords=35, MinWords=12, MaxFragments=2"
# A locale filter takes its more specific tags too: "de" finds "de-AT".
_LOCALE = "(a.locale = %(locale)s OR a.locale LIKE %(locale)s || '-%%')"
# A ticket's text becomes an OR of at most this many of its words.
_SUGGEST_TERMS = 64


@dataclass(frozen=True)
class Match:
    article: Article
    rank: float
    rank_key: int
    snippet: str


@dataclass(frozen=True)
class ArticleFilter:
    status: ArticleStatus | None = None
    locale: str = ""
    tag: str = ""
    published_only: bool = True


def _article(row: dict[str, Any]) -> Article:
    return Article(
        id=str(row["id"]),
        fields=ArticleFields(
            title=row["title"],
            body=row["body"],
            status=ArticleStatus(row["status"]),
            locale=row["locale"],
            tags=tuple(row["tags"]),
        ),
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        publish_time=row["publish_time"],
    )


def _visible(published_only: bool) -> str:
    return " AND a.status = 'published'" if published_only else ""


async def create(pool: db.Pool, tenant_id: str, f: ArticleFields, now: datetime) -> Article:
    published = now if f.status is ArticleStatus.PUBLISHED else None
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await db.fetch_one(
            conn,
            f"""
            INSERT INTO kb_articles AS a (tenant_id, id, title, body, status, locale,
                                          search_config, tags, create_time, update_time,
                                          publish_time)
            VALUES (%s, %s, %s, %s, %s, %s, %s::regconfig, %s, %s, %s, %s)
            RETURNING {_COLUMNS}
            """,
            (
                tenant_id,
                new_id(),
                f.title,
                f.body,
                f.status,
                f.locale,
                kb.search_config(f.locale),
                list(f.tags),
                now,
                now,
                published,
            ),
        )
    assert row is not None
    return _article(row)


async def _select(
    conn: db.Conn, tenant_id: str, article_id: str, published_only: bool, lock: str = ""
) -> Article:
    row = await db.fetch_one(
        conn,
        f"SELECT {_COLUMNS} FROM kb_articles a WHERE a.tenant_id = %s AND a.id = %s"
        f"{_visible(published_only)} {lock}",
        (tenant_id, article_id),
    )
    if row is None:
        raise NotFound("article", article_id)
    return _article(row)


async def get(pool: db.Pool, tenant_id: str, article_id: str, published_only: bool) -> Article:
    """An article; an unpublished one is not found for a caller who may see only published."""
    known = known_id("article", article_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select(conn, tenant_id, known, published_only)


async def update(
    pool: db.Pool,
    tenant_id: str,
    article_id: str,
    draft: ArticleFields,
    paths: Sequence[str],
    etag: str,
    now: datetime,
) -> Article:
    known = known_id("article", article_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, known, False, "FOR NO KEY UPDATE")
        check_etag("article", current.etag, etag)
        merged = kb.finish_update(updates.merge(current.fields, draft, paths), paths)
        if not updates.changed_fields(current.fields, merged):
            return current
        first_publish = (
            now
            if merged.status is ArticleStatus.PUBLISHED and current.publish_time is None
            else current.publish_time
        )
        row = await db.fetch_one(
            conn,
            f"""
            UPDATE kb_articles a SET title = %s, body = %s, status = %s, locale = %s,
                search_config = %s::regconfig, tags = %s, publish_time = %s,
                version = version + 1, etag = new_etag(), update_time = %s
            WHERE a.tenant_id = %s AND a.id = %s
            RETURNING {_COLUMNS}
            """,
            (
                merged.title,
                merged.body,
                merged.status,
                merged.locale,
                kb.search_config(merged.locale),
                list(merged.tags),
                first_publish,
                now,
                tenant_id,
                known,
            ),
        )
    assert row is not None
    return _article(row)


async def delete(pool: db.Pool, tenant_id: str, article_id: str, etag: str) -> None:
    known = known_id("article", article_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select(conn, tenant_id, known, False, "FOR UPDATE")
        check_etag("article", current.etag, etag)
        await conn.execute(
            "DELETE FROM kb_articles WHERE tenant_id = %s AND id = %s", (tenant_id, known)
        )


async def page(
    pool: db.Pool, tenant_id: str, filters: ArticleFilter, after: str | None, limit: int
) -> list[Article]:
    where = ["a.tenant_id = %(tenant_id)s"]
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if filters.status is not None:
        where.append("a.status = %(status)s")
        params["status"] = filters.status.value
    if filters.locale:
        where.append(_LOCALE)
        params["locale"] = filters.locale
    if filters.tag:
        where.append("a.tags @> ARRAY[%(tag)s]::text[]")
        params["tag"] = filters.tag
    if after is not None:
        where.append("a.id < %(after)s")
        params["after"] = after
    async with db.tenant_tx(pool, tenant_id) as conn:
        rows = await db.fetch_all(
            conn,
            f"SELECT {_COLUMNS} FROM kb_articles a"
            f" WHERE {' AND '.join(where)}{_visible(filters.published_only)}"
            " ORDER BY a.id DESC LIMIT %(limit)s",
            params,
        )
    return [_article(r) for r in rows]


def _matches(rows: list[dict[str, Any]]) -> list[Match]:
    return [Match(_article(r), r["rank"], r["rank_key"], r["snippet"]) for r in rows]


# The query as each configuration reads it (q), matched against the articles of that
# configuration; the snippet comes from the body, or from the title when only it matches.
_RANKED = f"""
SELECT {_COLUMNS}, ts_rank(a.search, q.query) AS rank,
       (ts_rank(a.search, q.query) * {_RANK_SCALE})::bigint AS rank_key,
       CASE WHEN to_tsvector(a.search_config, a.body) @@ q.query
            THEN ts_headline(a.search_config, a.body, q.query, '{_HEADLINE}')
            ELSE ts_headline(a.search_config, a.title, q.query, '{_HEADLINE}') END AS snippet
FROM kb_articles a JOIN q ON q.config = a.search_config
WHERE a.tenant_id = %(tenant_id)s AND a.search @@ q.query {{where}}
ORDER BY rank_key DESC, a.id DESC
LIMIT %(limit)s
"""
_SEARCH = (
    "WITH q AS (SELECT c.config, websearch_to_tsquery(c.config, %(query)s) AS query"
    " FROM unnest(%(configs)s::regconfig[]) AS c(config)) " + _RANKED
)
# A ticket's words, OR'ed: the articles that share most of them (and the rarer ones) first.
# The lexemes are already normalised by to_tsvector, so they are quoted into the tsquery as
# they are (quotes and backslashes doubled), not parsed again.
_SUGGEST = (
    "WITH q AS (SELECT c.config, (SELECT string_agg("
    "  '''' || replace(replace(w.lexeme, '\\', '\\\\'), '''', '''''') || '''', ' | ')"
    f"  FROM (SELECT lexeme FROM unnest(to_tsvector(c.config, %(text)s)) LIMIT {_SUGGEST_TERMS}) w"
    " )::tsquery AS query FROM unnest(%(configs)s::regconfig[]) AS c(config)) " + _RANKED
)


async def search(
    pool: db.Pool,
    tenant_id: str,
    query: str,
    locale: str,
    published_only: bool,
    after: tuple[int, str] | None,
    limit: int,
) -> list[Match]:
    params: dict[str, Any] = {
        "tenant_id": tenant_id,
        "query": query,
        "configs": [kb.search_config(locale)] if locale else _ALL_CONFIGS,
        "limit": limit,
    }
    where = _visible(published_only)
    if locale:
        where += f" AND {_LOCALE}"
        params["locale"] = locale
    if after is not None:
        where += (
            f" AND ((ts_rank(a.search, q.query) * {_RANK_SCALE})::bigint, a.id)"
            " < (%(after_rank)s, %(after_id)s)"
        )
        params |= {"after_rank": after[0], "after_id": after[1]}
    sql = _SEARCH.replace("{where}", where)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return _matches(await db.fetch_all(conn, sql, params))


async def suggest(pool: db.Pool, tenant_id: str, text: str, limit: int) -> list[Match]:
    """Published articles for a ticket's subject and description, best first."""
    params = {"tenant_id": tenant_id, "text": text, "configs": _ALL_CONFIGS, "limit": limit}
    sql = _SUGGEST.replace("{where}", _visible(True))
    async with db.tenant_tx(pool, tenant_id) as conn:
        return _matches(await db.fetch_all(conn, sql, params))
