"""What one tenant can see or do of another's: nothing, not even that it exists; and who may
call what."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta

import grpc
import psycopg

from crm.support.v1 import support_pb2 as pb
from trellis_devstack.testing import failure

from .harness import HOUR, Platform, Tenant, new_policy, new_ticket, reply, targets

TABLES = (
    "tickets",
    "ticket_statuses",
    "sla_timers",
    "contact_facts",
    "comments",
    "sla_policies",
    "kb_articles",
)


async def test_another_tenants_records_are_not_found(
    platform: Platform, tenant: Tenant, other_tenant: Tenant
) -> None:
    stub, md = platform.stub, other_tenant.md()
    policy = await new_policy(platform, tenant, targets=targets(resolution=HOUR))
    ticket = await new_ticket(platform, tenant, subject="Password reset")
    await reply(platform, tenant, ticket.id)
    article = await stub.CreateArticle(
        pb.CreateArticleRequest(
            article=pb.Article(title="Password reset", status=pb.ARTICLE_STATUS_PUBLISHED)
        ),
        metadata=tenant.md(),
    )
    calls: list[Awaitable[object]] = [
        stub.GetTicket(pb.GetTicketRequest(id=ticket.id), metadata=md),
        stub.UpdateTicket(
            pb.UpdateTicketRequest(id=ticket.id, ticket=pb.Ticket(subject="Mine")), metadata=md
        ),
        stub.ChangeTicketStatus(
            pb.ChangeTicketStatusRequest(id=ticket.id, status=pb.TICKET_STATUS_SOLVED),
            metadata=md,
        ),
        stub.RateTicket(pb.RateTicketRequest(id=ticket.id, rating=1), metadata=md),
        stub.SuggestArticles(pb.SuggestArticlesRequest(id=ticket.id), metadata=md),
        stub.CreateComment(
            pb.CreateCommentRequest(ticket_id=ticket.id, comment=pb.Comment(body="Hi")),
            metadata=md,
        ),
        stub.ListComments(pb.ListCommentsRequest(ticket_id=ticket.id), metadata=md),
        stub.GetSlaPolicy(pb.GetSlaPolicyRequest(id=policy.id), metadata=md),
        stub.UpdateSlaPolicy(
            pb.UpdateSlaPolicyRequest(id=policy.id, sla_policy=pb.SlaPolicy(name="Mine")),
            metadata=md,
        ),
        stub.DeleteSlaPolicy(pb.DeleteSlaPolicyRequest(id=policy.id), metadata=md),
        stub.GetArticle(pb.GetArticleRequest(id=article.id), metadata=md),
        stub.UpdateArticle(
            pb.UpdateArticleRequest(id=article.id, article=pb.Article(title="Mine")), metadata=md
        ),
        stub.DeleteArticle(pb.DeleteArticleRequest(id=article.id), metadata=md),
    ]
    for call in calls:
        err = await failure(call)
        assert err.code() is grpc.StatusCode.NOT_FOUND, err.details()
    assert list((await stub.ListTickets(pb.ListTicketsRequest(), metadata=md)).tickets) == []
    assert (
        list((await stub.ListSlaPolicies(pb.ListSlaPoliciesRequest(), metadata=md)).sla_policies)
        == []
    )
    assert list((await stub.ListArticles(pb.ListArticlesRequest(), metadata=md)).articles) == []
    found = await stub.SearchArticles(pb.SearchArticlesRequest(query="password"), metadata=md)
    assert list(found.matches) == []
    request = pb.GetSupportReportRequest()
    request.start_time.FromDatetime(platform.clock() - timedelta(days=1))
    request.end_time.FromDatetime(platform.clock() + timedelta(days=1))
    report = await stub.GetSupportReport(request, metadata=md)
    assert list(report.by_priority) == []
    assert report.csat.ratings == 0
    assert sum(s.tickets for s in report.backlog) == 0
    # The owner's records are as they were.
    mine = await stub.GetTicket(pb.GetTicketRequest(id=ticket.id), metadata=tenant.md())
    assert (mine.subject, mine.version) == ("Password reset", 2)


async def test_scopes_guard_every_kind_of_call(platform: Platform, tenant: Tenant) -> None:
    stub = platform.stub
    ticket = await new_ticket(platform, tenant)
    read_only = tenant.md("support:read", "kb:read")
    for call in (
        stub.UpdateTicket(
            pb.UpdateTicketRequest(id=ticket.id, ticket=pb.Ticket(subject="x")), metadata=read_only
        ),
        stub.CreateComment(
            pb.CreateCommentRequest(ticket_id=ticket.id, comment=pb.Comment(body="x")),
            metadata=read_only,
        ),
        stub.CreateArticle(
            pb.CreateArticleRequest(article=pb.Article(title="x")), metadata=read_only
        ),
        stub.GetTicket(pb.GetTicketRequest(id=ticket.id), metadata=tenant.md("kb:read")),
    ):
        err = await failure(call)
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    unsigned = await failure(stub.GetTicket(pb.GetTicketRequest(id=ticket.id)))
    assert unsigned.code() is grpc.StatusCode.UNAUTHENTICATED
    # admin covers every scope of its own tenant.
    got = await stub.GetTicket(pb.GetTicketRequest(id=ticket.id), metadata=tenant.md("admin"))
    assert got.id == ticket.id


async def test_row_level_security_binds_the_service_role(
    platform: Platform, tenant: Tenant
) -> None:
    """Even a hand-written query of the app role sees no rows without a tenant set."""
    await new_ticket(platform, tenant)
    async with await psycopg.AsyncConnection.connect(platform.app_url) as conn:
        for table in TABLES:
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            assert await cur.fetchone() == (0,), table
        cur = await conn.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s)"
            " AND NOT (relrowsecurity AND relforcerowsecurity)",
            (list(TABLES),),
        )
        assert await cur.fetchall() == []
