"""The knowledge base: articles, full-text search per locale with ranking and highlighted
snippets, suggestions for a ticket; drafts never reach a caller without kb:write."""

from __future__ import annotations

import grpc
import pytest

from crm.support.v1 import support_pb2 as pb
from trellis_devstack.testing import failure

from .harness import Platform, Tenant, field_errors, new_ticket

READER = ("kb:read", "support:read")

ARTICLES = [
    (
        "How to reset your password",
        "Open the sign-in page, choose 'Forgot password' and follow the link we email you. "
        "Reset links expire after one hour.",
    ),
    (
        "Setting up two-factor authentication",
        "Protect your account with an authenticator app. Scan the QR code in Settings and enter "
        "the six-digit code.",
    ),
    (
        "Exporting invoices as PDF",
        "Billing administrators can download every invoice as a PDF from the Billing page, or "
        "export a whole year at once.",
    ),
    (
        "Changing your billing address",
        "The address on your invoices comes from Billing > Details. Changes apply to the next "
        "invoice.",
    ),
    (
        "Printer troubleshooting",
        "If the printer shows a paper jam, open tray 2 and remove the paper. Restart the "
        "printer when the light blinks.",
    ),
]
QUERIES = [
    ("reset password", "How to reset your password"),
    ("forgot my password", "How to reset your password"),
    ("authenticator app code", "Setting up two-factor authentication"),
    ("download invoices pdf", "Exporting invoices as PDF"),
    ("billing address", "Changing your billing address"),
    ("paper jammed", "Printer troubleshooting"),
]


async def _article(
    p: Platform,
    tenant: Tenant,
    title: str,
    body: str,
    status: int = pb.ARTICLE_STATUS_PUBLISHED,
    **extra: object,
) -> pb.Article:
    article = pb.Article(title=title, body=body, status=status, **extra)  # type: ignore[arg-type]
    return await p.stub.CreateArticle(
        pb.CreateArticleRequest(article=article), metadata=tenant.md()
    )


async def _search(
    p: Platform, tenant: Tenant, query: str, *scopes: str, **extra: object
) -> pb.SearchArticlesResponse:
    return await p.stub.SearchArticles(
        pb.SearchArticlesRequest(query=query, **extra),  # type: ignore[arg-type]
        metadata=tenant.md(*scopes),
    )


@pytest.fixture
async def kb(platform: Platform, tenant: Tenant) -> dict[str, pb.Article]:
    return {title: await _article(platform, tenant, title, body) for title, body in ARTICLES}


async def test_search_puts_the_relevant_article_first(
    platform: Platform, tenant: Tenant, kb: dict[str, pb.Article]
) -> None:
    for query, best in QUERIES:
        found = await _search(platform, tenant, query, *READER)
        assert found.matches, query
        assert found.matches[0].article.title == best, query
        ranks = [m.rank for m in found.matches]
        assert ranks == sorted(ranks, reverse=True)


async def test_snippets_highlight_the_matching_words(
    platform: Platform, tenant: Tenant, kb: dict[str, pb.Article]
) -> None:
    (match,) = (await _search(platform, tenant, "jam", *READER)).matches
    assert "<mark>jam</mark>" in match.snippet
    assert match.article.title == "Printer troubleshooting"
    # A word only in the title: the snippet is the title, highlighted.
    found = await _search(platform, tenant, "troubleshooting", *READER)
    assert found.matches[0].snippet == "Printer <mark>troubleshooting</mark>"


async def test_drafts_never_reach_a_caller_without_kb_write(
    platform: Platform, tenant: Tenant, kb: dict[str, pb.Article]
) -> None:
    draft = await _article(
        platform,
        tenant,
        "Password rules (draft)",
        "Passwords need twelve characters.",
        pb.ARTICLE_STATUS_DRAFT,
    )
    archived = await _article(
        platform,
        tenant,
        "Old password policy",
        "Passwords used to need eight.",
        pb.ARTICLE_STATUS_ARCHIVED,
    )
    hidden = {draft.id, archived.id}
    reader = tenant.md(*READER)
    found = await _search(platform, tenant, "password", *READER)
    assert hidden.isdisjoint(m.article.id for m in found.matches)
    listed = await platform.stub.ListArticles(
        pb.ListArticlesRequest(page_size=500), metadata=reader
    )
    assert hidden.isdisjoint(a.id for a in listed.articles)
    assert len(listed.articles) == len(ARTICLES)
    for article_id in hidden:
        err = await failure(
            platform.stub.GetArticle(pb.GetArticleRequest(id=article_id), metadata=reader)
        )
        assert err.code() is grpc.StatusCode.NOT_FOUND
    err = await failure(
        platform.stub.ListArticles(
            pb.ListArticlesRequest(status=pb.ARTICLE_STATUS_DRAFT), metadata=reader
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    ticket = await new_ticket(
        platform,
        tenant,
        subject="Password rules?",
        description="How many characters must a password have?",
    )
    suggested = await platform.stub.SuggestArticles(
        pb.SuggestArticlesRequest(id=ticket.id), metadata=reader
    )
    assert hidden.isdisjoint(m.article.id for m in suggested.matches)
    # An agent sees them.
    agent = await _search(platform, tenant, "password", "kb:read", "kb:write")
    assert hidden <= {m.article.id for m in agent.matches}
    drafts = await platform.stub.ListArticles(
        pb.ListArticlesRequest(status=pb.ARTICLE_STATUS_DRAFT), metadata=tenant.md()
    )
    assert [a.id for a in drafts.articles] == [draft.id]


async def test_each_locale_is_searched_with_its_own_language(
    platform: Platform, tenant: Tenant
) -> None:
    german = await _article(
        platform,
        tenant,
        "Passwort zurücksetzen",
        "Wählen Sie 'Passwort vergessen'. Die Links laufen nach einer Stunde ab.",
        locale="de-de",
    )
    english = await _article(
        platform, tenant, "Resetting passwords", "Choose 'Forgot password'.", locale="en"
    )
    assert german.locale == "de-DE"
    # German stemming: "Passwörter" finds "Passwort"; "de" takes "de-DE" in.
    for locale in ("de", "DE-de"):
        found = await _search(platform, tenant, "Passwörter", *READER, locale=locale)
        assert [m.article.id for m in found.matches] == [german.id]
    assert not (await _search(platform, tenant, "Passwörter", *READER, locale="de-AT")).matches
    # English stemming would not find it: "passwörter" is no English word for "passwort".
    assert not (await _search(platform, tenant, "Passwörter", *READER, locale="en")).matches
    listed = await platform.stub.ListArticles(
        pb.ListArticlesRequest(locale="de"), metadata=tenant.md(*READER)
    )
    assert [a.id for a in listed.articles] == [german.id]
    # English stemming: "resets" finds "Resetting"; without a locale every language is read.
    found = await _search(platform, tenant, "resets", *READER)
    assert [m.article.id for m in found.matches] == [english.id]


async def test_search_pages_follow_the_ranking(platform: Platform, tenant: Tenant) -> None:
    for i in range(5):
        await _article(platform, tenant, f"Invoice guide {i}", "invoice " * (i + 1))
    first = await _search(platform, tenant, "invoice", *READER, page_size=2)
    second = await _search(
        platform, tenant, "invoice", *READER, page_size=2, page_token=first.next_page_token
    )
    third = await _search(
        platform, tenant, "invoice", *READER, page_size=2, page_token=second.next_page_token
    )
    titles = [m.article.title for r in (first, second, third) for m in r.matches]
    assert sorted(titles) == [f"Invoice guide {i}" for i in range(5)]
    assert third.next_page_token == ""
    ranks = [m.rank for r in (first, second, third) for m in r.matches]
    assert ranks == sorted(ranks, reverse=True)
    err = await failure(
        _search(platform, tenant, "other", *READER, page_token=first.next_page_token)
    )
    assert field_errors(err) == {
        "page_token": "the page token belongs to a request with other filters"
    }


async def test_suggestions_for_a_ticket(
    platform: Platform, tenant: Tenant, kb: dict[str, pb.Article]
) -> None:
    ticket = await new_ticket(
        platform,
        tenant,
        subject="Cannot sign in",
        description="I forgot my password and the reset link has expired. What now?",
    )
    found = await platform.stub.SuggestArticles(
        pb.SuggestArticlesRequest(id=ticket.id, max_results=2), metadata=tenant.md(*READER)
    )
    assert next(m.article.title for m in found.matches) == "How to reset your password"
    assert len(found.matches) <= 2
    nothing = await new_ticket(platform, tenant, subject="Zebra", description="")
    empty = await platform.stub.SuggestArticles(
        pb.SuggestArticlesRequest(id=nothing.id), metadata=tenant.md()
    )
    assert list(empty.matches) == []


async def test_articles_change_and_publish_once(platform: Platform, tenant: Tenant) -> None:
    made = await _article(platform, tenant, "Draft", "Text", pb.ARTICLE_STATUS_DRAFT, tags=["a"])
    assert not made.HasField("publish_time")
    platform.clock.advance(minutes=1)
    published = await platform.stub.UpdateArticle(
        pb.UpdateArticleRequest(
            id=made.id, article=pb.Article(status=pb.ARTICLE_STATUS_PUBLISHED, title="Final")
        ),
        metadata=tenant.md(),
    )
    assert (published.title, published.version, list(published.tags)) == ("Final", 2, ["a"])
    assert published.publish_time.ToDatetime() == platform.clock().replace(tzinfo=None)
    platform.clock.advance(minutes=1)
    again = await platform.stub.UpdateArticle(
        pb.UpdateArticleRequest(id=made.id, article=pb.Article(body="New text")),
        metadata=tenant.md(),
    )
    assert again.publish_time == published.publish_time
    found = await _search(platform, tenant, "new text", *READER)
    assert [m.article.id for m in found.matches] == [made.id]
    await platform.stub.DeleteArticle(pb.DeleteArticleRequest(id=made.id), metadata=tenant.md())
    err = await failure(
        platform.stub.GetArticle(pb.GetArticleRequest(id=made.id), metadata=tenant.md())
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND


async def test_suggestions_take_any_text(platform: Platform, tenant: Tenant) -> None:
    await _article(platform, tenant, "Paths on Windows", r"Use C:\Users\me and it's fine")
    ticket = await new_ticket(
        platform,
        tenant,
        subject=r"C:\Users\me: it's 'quoted' \ back\\slash & | ! ( ) <-> :* \"",
        description="o'brien@example.com https://example.com/a?b=c&d 1.2.3 -- ' '' '''",
    )
    found = await platform.stub.SuggestArticles(
        pb.SuggestArticlesRequest(id=ticket.id), metadata=tenant.md()
    )
    assert [m.article.title for m in found.matches] == ["Paths on Windows"]
