"""Bad input on every route: INVALID_ARGUMENT naming the field, nothing written."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime

import grpc
import pytest

from crm.support.v1 import support_pb2 as pb
from crmkit import paging
from trellis_devstack.testing import failure

from .harness import Platform, Tenant, field_errors, new_ticket, targets

UNKNOWN = "0190a0a0-0000-7000-8000-0000000000ff"


async def _invalid(call: Awaitable[object]) -> dict[str, str]:
    err = await failure(call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return field_errors(err)


async def test_ticket_routes(platform: Platform, tenant: Tenant) -> None:
    stub, md = platform.stub, tenant.md()
    made = await new_ticket(platform, tenant)
    create = pb.CreateTicketRequest(
        ticket=pb.Ticket(subject="x" * 301, contact_id=made.contact_id, priority=99)  # type: ignore[arg-type]
    )
    assert await _invalid(stub.CreateTicket(create, metadata=md)) == {
        "ticket.subject": "longer than 300 characters"
    }
    create.ticket.subject = "ok"
    assert await _invalid(stub.CreateTicket(create, metadata=md)) == {
        "ticket.priority": "unknown value 99"
    }
    many = pb.CreateTicketRequest(
        ticket=pb.Ticket(subject="s", contact_id=made.contact_id, tags=["t"] * 51)
    )
    assert await _invalid(stub.CreateTicket(many, metadata=md)) == {
        "ticket.tags": "at most 50 items are allowed"
    }
    assert await _invalid(stub.GetTicket(pb.GetTicketRequest(id="x" * 65), metadata=md)) == {
        "id": "longer than 64 characters"
    }
    assert await _invalid(
        stub.UpdateTicket(
            pb.UpdateTicketRequest(id=made.id, ticket=pb.Ticket(), update_mask=["colour"]),
            metadata=md,
        )
    ) == {"update_mask": "unknown field 'colour'"}
    assert await _invalid(
        stub.UpdateTicket(
            pb.UpdateTicketRequest(
                id=made.id, ticket=pb.Ticket(), update_mask=["subject", "priority"]
            ),
            metadata=md,
        )
    ) == {"ticket.subject": "must not be empty", "ticket.priority": "must be set"}
    assert await _invalid(stub.ListTickets(pb.ListTicketsRequest(page_size=501), metadata=md)) == {
        "page_size": "must be at most 500"
    }
    assert await _invalid(stub.ListTickets(pb.ListTicketsRequest(page_size=-1), metadata=md)) == {
        "page_size": "must be at least 0"
    }
    assert await _invalid(
        stub.ListTickets(pb.ListTicketsRequest(page_token="%%%"), metadata=md)
    ) == {"page_token": "malformed page token"}
    assert await _invalid(
        stub.ListTickets(pb.ListTicketsRequest(status=42), metadata=md)  # type: ignore[arg-type]
    ) == {"status": "unknown value 42"}
    assert await _invalid(stub.ListTickets(pb.ListTicketsRequest(team="a\x00b"), metadata=md)) == {
        "team": "must not contain control characters"
    }
    assert await _invalid(
        stub.ChangeTicketStatus(pb.ChangeTicketStatusRequest(id=made.id), metadata=md)
    ) == {"status": "required"}
    assert await _invalid(stub.RateTicket(pb.RateTicketRequest(id=made.id), metadata=md)) == {
        "rating": "must be 1 to 5"
    }
    assert await _invalid(
        stub.RateTicket(pb.RateTicketRequest(id=made.id, rating=6), metadata=md)
    ) == {"rating": "must be at most 5"}
    assert await _invalid(
        stub.SuggestArticles(pb.SuggestArticlesRequest(id=made.id, max_results=21), metadata=md)
    ) == {"max_results": "must be at most 20"}
    got = await stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=md)
    assert got == made


async def test_comment_routes(platform: Platform, tenant: Tenant) -> None:
    stub, md = platform.stub, tenant.md()
    made = await new_ticket(platform, tenant)
    assert await _invalid(
        stub.CreateComment(
            pb.CreateCommentRequest(ticket_id=made.id, comment=pb.Comment(body=" ")), metadata=md
        )
    ) == {"comment.body": "must not be empty"}
    assert await _invalid(
        stub.CreateComment(
            pb.CreateCommentRequest(ticket_id=made.id, comment=pb.Comment(body="x" * 20001)),
            metadata=md,
        )
    ) == {"comment.body": "longer than 20000 characters"}
    assert await _invalid(
        stub.CreateComment(
            pb.CreateCommentRequest(
                ticket_id=made.id,
                comment=pb.Comment(body="x", author_type=7),  # type: ignore[arg-type]
            ),
            metadata=md,
        )
    ) == {"comment.author_type": "unknown value 7"}
    assert await _invalid(
        stub.ListComments(pb.ListCommentsRequest(ticket_id=made.id, page_size=501), metadata=md)
    ) == {"page_size": "must be at most 500"}
    missing = await failure(
        stub.CreateComment(
            pb.CreateCommentRequest(ticket_id=UNKNOWN, comment=pb.Comment(body="x")), metadata=md
        )
    )
    assert missing.code() is grpc.StatusCode.NOT_FOUND
    assert await platform.db.rows("SELECT 1 FROM comments WHERE tenant_id = %s", tenant.id) == []


async def test_policy_routes(platform: Platform, tenant: Tenant) -> None:
    stub, md = platform.stub, tenant.md()
    hours = pb.BusinessHours(
        time_zone="UTC",
        weekly=[pb.WorkingHours(day=pb.DAY_OF_WEEK_MONDAY, start="09:00", end="10:00")] * 29,
    )
    assert await _invalid(
        stub.CreateSlaPolicy(
            pb.CreateSlaPolicyRequest(
                sla_policy=pb.SlaPolicy(
                    name="x", targets=targets(resolution=60), business_hours=hours
                )
            ),
            metadata=md,
        )
    ) == {"sla_policy.business_hours.weekly": "at most 28 items are allowed"}
    assert await _invalid(
        stub.CreateSlaPolicy(
            pb.CreateSlaPolicyRequest(
                sla_policy=pb.SlaPolicy(
                    name="x",
                    targets=targets(resolution=60),
                    conditions=pb.SlaConditions(priorities=[pb.PRIORITY_UNSPECIFIED]),
                    warning_percent=100,
                )
            ),
            metadata=md,
        )
    ) == {"sla_policy.warning_percent": "must be at most 99"}
    assert await _invalid(
        stub.CreateSlaPolicy(
            pb.CreateSlaPolicyRequest(
                sla_policy=pb.SlaPolicy(
                    name="x",
                    targets=targets(resolution=60),
                    conditions=pb.SlaConditions(priorities=[pb.PRIORITY_UNSPECIFIED]),
                )
            ),
            metadata=md,
        )
    ) == {"sla_policy.conditions.priorities[0]": "must be a value, not UNSPECIFIED"}
    policy = await stub.CreateSlaPolicy(
        pb.CreateSlaPolicyRequest(
            sla_policy=pb.SlaPolicy(name="ok", targets=targets(resolution=60))
        ),
        metadata=md,
    )
    assert await _invalid(
        stub.UpdateSlaPolicy(
            pb.UpdateSlaPolicyRequest(
                id=policy.id, sla_policy=pb.SlaPolicy(), update_mask=["targets.resolution"]
            ),
            metadata=md,
        )
    ) == {"update_mask": "unknown field 'targets.resolution'"}
    assert await _invalid(
        stub.UpdateSlaPolicy(
            pb.UpdateSlaPolicyRequest(
                id=policy.id, sla_policy=pb.SlaPolicy(), update_mask=["targets"]
            ),
            metadata=md,
        )
    ) == {"sla_policy.targets": "set at least one of first_response, next_response, resolution"}
    assert await _invalid(
        stub.ListSlaPolicies(
            pb.ListSlaPoliciesRequest(page_token=paging.encode_page_token([1, "no-id"], {})),
            metadata=md,
        )
    ) == {"page_token": "malformed page token"}
    for call in (
        stub.GetSlaPolicy(pb.GetSlaPolicyRequest(id="nope"), metadata=md),
        stub.DeleteSlaPolicy(pb.DeleteSlaPolicyRequest(id=UNKNOWN), metadata=md),
    ):
        assert (await failure(call)).code() is grpc.StatusCode.NOT_FOUND
    got = await stub.GetSlaPolicy(pb.GetSlaPolicyRequest(id=policy.id), metadata=md)
    assert got == policy


async def test_article_routes(platform: Platform, tenant: Tenant) -> None:
    stub, md = platform.stub, tenant.md()
    assert await _invalid(
        stub.CreateArticle(
            pb.CreateArticleRequest(article=pb.Article(title="t", body="b" * 100001)), metadata=md
        )
    ) == {"article.body": "longer than 100000 characters"}
    assert await _invalid(
        stub.CreateArticle(
            pb.CreateArticleRequest(article=pb.Article(title="t", status=9)),  # type: ignore[arg-type]
            metadata=md,
        )
    ) == {"article.status": "unknown value 9"}
    made = await stub.CreateArticle(
        pb.CreateArticleRequest(article=pb.Article(title="t")), metadata=md
    )
    assert await _invalid(
        stub.UpdateArticle(
            pb.UpdateArticleRequest(id=made.id, article=pb.Article(), update_mask=["status"]),
            metadata=md,
        )
    ) == {"article.status": "must be DRAFT, PUBLISHED or ARCHIVED"}
    assert await _invalid(stub.ListArticles(pb.ListArticlesRequest(locale="?!"), metadata=md)) == {
        "locale": 'not a language tag, e.g. "en" or "pt-BR"'
    }
    assert await _invalid(
        stub.SearchArticles(pb.SearchArticlesRequest(query="  "), metadata=md)
    ) == {"query": "must not be empty"}
    assert await _invalid(
        stub.SearchArticles(pb.SearchArticlesRequest(query="a\u202eb"), metadata=md)
    ) == {"query": "must not contain bidirectional override characters"}
    assert await _invalid(
        stub.SearchArticles(pb.SearchArticlesRequest(query="x" * 501), metadata=md)
    ) == {"query": "longer than 500 characters"}
    # Search syntax a user gets wrong is still a search, never an error.
    odd = await stub.SearchArticles(
        pb.SearchArticlesRequest(query='"unclosed -- or & | !('), metadata=md
    )
    assert list(odd.matches) == []
    for call in (
        stub.GetArticle(pb.GetArticleRequest(id=UNKNOWN), metadata=md),
        stub.DeleteArticle(pb.DeleteArticleRequest(id="nope"), metadata=md),
    ):
        assert (await failure(call)).code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("start", "end", "errors"),
    [
        (None, datetime(2030, 1, 1, tzinfo=UTC), {"start_time": "required"}),
        (datetime(2030, 1, 1, tzinfo=UTC), None, {"end_time": "required"}),
        (
            datetime(2030, 1, 2, tzinfo=UTC),
            datetime(2030, 1, 1, tzinfo=UTC),
            {"end_time": "must be after start_time"},
        ),
        (
            datetime(2030, 1, 1, tzinfo=UTC),
            datetime(2031, 6, 1, tzinfo=UTC),
            {"end_time": "at most 400 days after start_time"},
        ),
    ],
)
async def test_report_ranges(
    platform: Platform,
    tenant: Tenant,
    start: datetime | None,
    end: datetime | None,
    errors: dict[str, str],
) -> None:
    request = pb.GetSupportReportRequest()
    if start is not None:
        request.start_time.FromDatetime(start)
    if end is not None:
        request.end_time.FromDatetime(end)
    assert await _invalid(platform.stub.GetSupportReport(request, metadata=tenant.md())) == errors
