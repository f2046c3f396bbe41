"""The gRPC face of the support service: requests -> domain -> store -> replies.

The chassis interceptor has already verified the caller and the RPC's scope, checked the
proto-declared limits, and turns the domain's errors into statuses; each handler is its use
case only. Every handler reads the injected clock once, so what it stores and what it answers
agree.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crm.support.v1 import support_pb2 as pb
from crm.support.v1 import support_pb2_grpc
from crmkit import db, paging, text, updates
from crmkit.client import Callee
from crmkit.clock import Clock
from crmkit.context import caller
from crmkit.errors import Invalid, ServiceError, invalid_field, permission_denied
from crmkit.ids import canonical_uuid, filter_id
from crmkit.protomap import time_from_proto
from trellis_support import (
    domain,
    kb,
    kb_store,
    mapping,
    policies,
    policy_store,
    report_store,
    ticket_store,
)
from trellis_support.domain import Satisfaction, TicketFields
from trellis_support.kb import ArticleFields
from trellis_support.policies import PolicyFields

Ctx = grpc.aio.ServicerContext[Any, Any]

_TICKET_PATHS = updates.writable_paths(TicketFields)
_POLICY_PATHS = updates.writable_paths(PolicyFields)
_ARTICLE_PATHS = updates.writable_paths(ArticleFields)
DEFAULT_SUGGESTIONS = 5
MAX_REPORT_RANGE = timedelta(days=400)


def _time(request: Message, field: str) -> datetime:
    found = time_from_proto(request, field)
    if found is None:
        raise invalid_field(field, "required")
    return found


def _after_pair(token: str, filters: dict[str, object]) -> tuple[int, str] | None:
    """A (number, id) sort key: a policy's position or a match's rank, then its id."""
    after = paging.decode_page_token(token, filters, arity=2)
    if after is None:
        return None
    number, raw_id = after
    after_id = canonical_uuid(str(raw_id))
    if not isinstance(number, int) or after_id is None:
        raise invalid_field("page_token", "malformed page token")
    return number, after_id


class SupportApi(support_pb2_grpc.SupportServiceServicer):
    def __init__(
        self, pool: db.Pool, contacts: Callee, clock: Clock, reopen_window: timedelta
    ) -> None:
        self._pool = pool
        self._contacts = contacts
        self._contacts_stub = contacts_pb2_grpc.ContactsServiceStub(contacts.channel)
        self._clock = clock
        self._reopen_window = reopen_window

    # --- the contacts service -----------------------------------------------------------------

    async def _contact(self, contact_id: str) -> contacts_pb2.Contact:
        """The ticket's contact, as the caller may see it: another tenant's is not found."""
        try:
            return await self._contacts.call(
                self._contacts_stub.GetContact, contacts_pb2.GetContactRequest(id=contact_id)
            )
        except ServiceError as err:
            raise self._reference_error(err, "ticket.contact_id", "contact") from None

    async def _check_company(self, company_id: str) -> None:
        try:
            await self._contacts.call(
                self._contacts_stub.GetCompany, contacts_pb2.GetCompanyRequest(id=company_id)
            )
        except ServiceError as err:
            raise self._reference_error(err, "ticket.company_id", "company") from None

    @staticmethod
    def _reference_error(err: ServiceError, path: str, kind: str) -> ServiceError:
        if err.code is grpc.StatusCode.NOT_FOUND:
            return invalid_field(path, f"no such {kind} in this tenant")
        if err.code is grpc.StatusCode.PERMISSION_DENIED:
            return permission_denied(
                f"{path} is checked with the contacts service, which needs scope contacts:read"
            )
        return err

    # --- tickets ------------------------------------------------------------------------------

    async def CreateTicket(self, request: pb.CreateTicketRequest, context: Ctx) -> pb.Ticket:
        fields = domain.new_ticket_fields(mapping.ticket_draft(request.ticket))
        contact = mapping.contact_facts(await self._contact(fields.contact_id))
        if fields.company_id and fields.company_id != contact.company_id:
            await self._check_company(fields.company_id)
        fields = dataclasses.replace(fields, company_id=fields.company_id or contact.company_id)
        now = self._clock()
        written = await ticket_store.create(self._pool, caller(), fields, contact, now)
        written.verdicts.count()
        return mapping.ticket_to_proto(written.view, now)

    async def GetTicket(self, request: pb.GetTicketRequest, context: Ctx) -> pb.Ticket:
        view = await ticket_store.get(self._pool, caller().tenant_id, request.id)
        return mapping.ticket_to_proto(view, self._clock())

    async def UpdateTicket(self, request: pb.UpdateTicketRequest, context: Ctx) -> pb.Ticket:
        paths = updates.mask_paths(request.update_mask, request.ticket, _TICKET_PATHS)
        draft = domain.normalize_ticket(
            mapping.ticket_draft(request.ticket), updates.top_level(paths), update=True
        )
        if "company_id" in paths and draft.company_id:
            await self._check_company(draft.company_id)
        now = self._clock()
        written = await ticket_store.update(
            self._pool, caller(), request.id, draft, paths, request.etag, now
        )
        written.verdicts.count()
        return mapping.ticket_to_proto(written.view, now)

    async def ListTickets(
        self, request: pb.ListTicketsRequest, context: Ctx
    ) -> pb.ListTicketsResponse:
        size = paging.page_size(request.page_size)
        contact = filter_id(request.contact_id)
        if contact is None:
            return pb.ListTicketsResponse()
        filters = ticket_store.TicketFilter(
            status=mapping.STATUS.from_proto(request.status, "status"),
            priority=mapping.PRIORITY.from_proto(request.priority, "priority"),
            assignee_id=text.filter_text(request.assignee_id, "assignee_id"),
            team=text.filter_text(request.team, "team"),
            contact_id=contact,
            tag=text.filter_text(request.tag, "tag"),
        )
        fingerprint = dataclasses.asdict(filters)
        after = paging.after_id(request.page_token, fingerprint)
        views = await ticket_store.page(self._pool, caller().tenant_id, filters, after, size + 1)
        now = self._clock()
        tickets, token = paging.next_page(
            [mapping.ticket_to_proto(v, now) for v in views], size, lambda t: [t.id], fingerprint
        )
        return pb.ListTicketsResponse(tickets=tickets, next_page_token=token)

    async def ChangeTicketStatus(
        self, request: pb.ChangeTicketStatusRequest, context: Ctx
    ) -> pb.Ticket:
        status = mapping.STATUS.from_proto(request.status, "status")
        if status is None:
            raise invalid_field("status", "required")
        now = self._clock()
        written = await ticket_store.change_status(
            self._pool, caller(), request.id, status, request.etag, now
        )
        written.verdicts.count()
        return mapping.ticket_to_proto(written.view, now)

    async def RateTicket(self, request: pb.RateTicketRequest, context: Ctx) -> pb.Ticket:
        out: list[tuple[str, str]] = []
        if not 1 <= request.rating <= 5:
            out.append(("rating", "must be 1 to 5"))
        comment = domain.long_text(request.comment, "comment", out)
        if out:
            raise Invalid(out)
        now = self._clock()
        written = await ticket_store.rate(
            self._pool, caller(), request.id, Satisfaction(request.rating, comment, now), now
        )
        return mapping.ticket_to_proto(written.view, now)

    async def SuggestArticles(
        self, request: pb.SuggestArticlesRequest, context: Ctx
    ) -> pb.SuggestArticlesResponse:
        tenant_id = caller().tenant_id
        found = await kb_store.suggest(
            self._pool,
            tenant_id,
            await ticket_store.subject_and_description(self._pool, tenant_id, request.id),
            request.max_results or DEFAULT_SUGGESTIONS,
        )
        return pb.SuggestArticlesResponse(matches=[_match_to_proto(m) for m in found])

    # --- comments -----------------------------------------------------------------------------

    async def CreateComment(self, request: pb.CreateCommentRequest, context: Ctx) -> pb.Comment:
        draft = mapping.comment_draft(request.comment)
        comment, written = await ticket_store.add_comment(
            self._pool, caller(), request.ticket_id, draft, self._clock(), self._reopen_window
        )
        written.verdicts.count()
        return mapping.comment_to_proto(comment)

    async def ListComments(
        self, request: pb.ListCommentsRequest, context: Ctx
    ) -> pb.ListCommentsResponse:
        size = paging.page_size(request.page_size)
        fingerprint: dict[str, object] = {"ticket_id": request.ticket_id}
        after = paging.after_id(request.page_token, fingerprint)
        found = await ticket_store.comments_page(
            self._pool, caller().tenant_id, request.ticket_id, after, size + 1
        )
        comments, token = paging.next_page(
            [mapping.comment_to_proto(c) for c in found], size, lambda c: [c.id], fingerprint
        )
        return pb.ListCommentsResponse(comments=comments, next_page_token=token)

    # --- SLA policies -------------------------------------------------------------------------

    async def CreateSlaPolicy(
        self, request: pb.CreateSlaPolicyRequest, context: Ctx
    ) -> pb.SlaPolicy:
        fields = policies.normalize_policy(mapping.policy_draft(request.sla_policy), _POLICY_PATHS)
        stored = await policy_store.create(self._pool, caller().tenant_id, fields, self._clock())
        return mapping.policy_to_proto(stored)

    async def GetSlaPolicy(self, request: pb.GetSlaPolicyRequest, context: Ctx) -> pb.SlaPolicy:
        return mapping.policy_to_proto(
            await policy_store.get(self._pool, caller().tenant_id, request.id)
        )

    async def UpdateSlaPolicy(
        self, request: pb.UpdateSlaPolicyRequest, context: Ctx
    ) -> pb.SlaPolicy:
        paths = updates.mask_paths(request.update_mask, request.sla_policy, _POLICY_PATHS)
        draft = policies.normalize_policy(mapping.policy_draft(request.sla_policy), paths)
        stored = await policy_store.update(
            self._pool, caller().tenant_id, request.id, draft, paths, request.etag, self._clock()
        )
        return mapping.policy_to_proto(stored)

    async def DeleteSlaPolicy(
        self, request: pb.DeleteSlaPolicyRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await policy_store.delete(self._pool, caller().tenant_id, request.id, request.etag)
        return empty_pb2.Empty()

    async def ListSlaPolicies(
        self, request: pb.ListSlaPoliciesRequest, context: Ctx
    ) -> pb.ListSlaPoliciesResponse:
        size = paging.page_size(request.page_size)
        fingerprint: dict[str, object] = {}
        after = _after_pair(request.page_token, fingerprint)
        found = await policy_store.page(self._pool, caller().tenant_id, after, size + 1)
        items, token = paging.next_page(
            [mapping.policy_to_proto(p) for p in found],
            size,
            lambda p: [p.position, p.id],
            fingerprint,
        )
        return pb.ListSlaPoliciesResponse(sla_policies=items, next_page_token=token)

    # --- knowledge base -----------------------------------------------------------------------

    @staticmethod
    def _is_agent() -> bool:
        return caller().allows(kb.AGENT_SCOPE)

    async def CreateArticle(self, request: pb.CreateArticleRequest, context: Ctx) -> pb.Article:
        fields = kb.new_article_fields(mapping.article_draft(request.article))
        stored = await kb_store.create(self._pool, caller().tenant_id, fields, self._clock())
        return mapping.article_to_proto(stored)

    async def GetArticle(self, request: pb.GetArticleRequest, context: Ctx) -> pb.Article:
        found = await kb_store.get(
            self._pool, caller().tenant_id, request.id, published_only=not self._is_agent()
        )
        return mapping.article_to_proto(found)

    async def UpdateArticle(self, request: pb.UpdateArticleRequest, context: Ctx) -> pb.Article:
        paths = updates.mask_paths(request.update_mask, request.article, _ARTICLE_PATHS)
        draft = kb.normalize_article(mapping.article_draft(request.article), paths)
        stored = await kb_store.update(
            self._pool, caller().tenant_id, request.id, draft, paths, request.etag, self._clock()
        )
        return mapping.article_to_proto(stored)

    async def DeleteArticle(
        self, request: pb.DeleteArticleRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await kb_store.delete(self._pool, caller().tenant_id, request.id, request.etag)
        return empty_pb2.Empty()

    async def ListArticles(
        self, request: pb.ListArticlesRequest, context: Ctx
    ) -> pb.ListArticlesResponse:
        size = paging.page_size(request.page_size)
        status = mapping.ARTICLE_STATUS.from_proto(request.status, "status")
        agent = self._is_agent()
        if status in kb.UNPUBLISHED and not agent:
            raise permission_denied(f"draft and archived articles need scope {kb.AGENT_SCOPE}")
        filters = kb_store.ArticleFilter(
            status=status,
            locale=kb.locale_filter(request.locale, "locale"),
            tag=text.filter_text(request.tag, "tag"),
            published_only=not agent,
        )
        fingerprint = dataclasses.asdict(filters)
        after = paging.after_id(request.page_token, fingerprint)
        found = await kb_store.page(self._pool, caller().tenant_id, filters, after, size + 1)
        items, token = paging.next_page(
            [mapping.article_to_proto(a) for a in found], size, lambda a: [a.id], fingerprint
        )
        return pb.ListArticlesResponse(articles=items, next_page_token=token)

    async def SearchArticles(
        self, request: pb.SearchArticlesRequest, context: Ctx
    ) -> pb.SearchArticlesResponse:
        size = paging.page_size(request.page_size)
        query = text.filter_text(request.query, "query")
        if not query:
            raise invalid_field("query", "must not be empty")
        locale = kb.locale_filter(request.locale, "locale")
        agent = self._is_agent()
        fingerprint: dict[str, object] = {"query": query, "locale": locale, "agent": agent}
        after = _after_pair(request.page_token, fingerprint)
        found = await kb_store.search(
            self._pool, caller().tenant_id, query, locale, not agent, after, size + 1
        )
        keys = {m.article.id: m.rank_key for m in found}
        matches, token = paging.next_page(
            [_match_to_proto(m) for m in found],
            size,
            lambda m: [keys[m.article.id], m.article.id],
            fingerprint,
        )
        return pb.SearchArticlesResponse(matches=matches, next_page_token=token)

    # --- reports ------------------------------------------------------------------------------

    async def GetSupportReport(
        self, request: pb.GetSupportReportRequest, context: Ctx
    ) -> pb.SupportReport:
        start, end = _time(request, "start_time"), _time(request, "end_time")
        if end <= start:
            raise invalid_field("end_time", "must be after start_time")
        if end - start > MAX_REPORT_RANGE:
            raise invalid_field(
                "end_time", f"at most {MAX_REPORT_RANGE.days} days after start_time"
            )
        found = await report_store.report(self._pool, caller().tenant_id, start, end)
        return mapping.report_to_proto(found, start, end)


def _match_to_proto(match: kb_store.Match) -> pb.ArticleMatch:
    return pb.ArticleMatch(
        article=mapping.article_to_proto(match.article), rank=match.rank, snippet=match.snippet
    )
