"""The gRPC face of the sales service: requests -> domain -> stores -> replies.

The chassis interceptor has already verified the caller and the RPC's scope, checked the
proto-declared limits, and turns the domain's errors into statuses; each handler is its use
case only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
from google.protobuf import empty_pb2

from crm.sales.v1 import sales_pb2, sales_pb2_grpc
from crmkit import db, paging, protomap, text, updates
from crmkit.clock import Clock
from crmkit.context import caller
from crmkit.errors import Invalid, invalid_field
from crmkit.ids import canonical_uuid, filter_id
from trellis_sales import (
    activities,
    conversion,
    deals,
    domain,
    leads,
    mapping,
    pipelines,
    reports,
    rules,
)
from trellis_sales.domain import (
    ActivityFields,
    DealFields,
    LeadFields,
    PipelineFields,
    Violation,
)
from trellis_sales.scoring import RuleFields

Ctx = grpc.aio.ServicerContext[Any, Any]

_LEAD_PATHS = updates.writable_paths(LeadFields)
_DEAL_PATHS = updates.writable_paths(DealFields)
_PIPELINE_PATHS = updates.writable_paths(PipelineFields)
_ACTIVITY_PATHS = updates.writable_paths(ActivityFields)
_RULE_PATHS = updates.writable_paths(RuleFields)


class SalesApi(sales_pb2_grpc.SalesServiceServicer):
    def __init__(self, pool: db.Pool, contacts: conversion.Contacts, clock: Clock) -> None:
        self._pool = pool
        self._contacts = contacts
        self._clock = clock

    # --- leads --------------------------------------------------------------------------------

    async def CreateLead(
        self, request: sales_pb2.CreateLeadRequest, context: Ctx
    ) -> sales_pb2.Lead:
        draft = domain.normalize_lead(mapping.lead_draft(request.lead), _LEAD_PATHS)
        lead = await leads.create(self._pool, caller(), draft, self._clock())
        return mapping.lead_to_proto(lead)

    async def GetLead(self, request: sales_pb2.GetLeadRequest, context: Ctx) -> sales_pb2.Lead:
        return mapping.lead_to_proto(await leads.get(self._pool, caller().tenant_id, request.id))

    async def UpdateLead(
        self, request: sales_pb2.UpdateLeadRequest, context: Ctx
    ) -> sales_pb2.Lead:
        paths = updates.mask_paths(request.update_mask, request.lead, _LEAD_PATHS)
        draft = domain.normalize_lead(mapping.lead_draft(request.lead), updates.top_level(paths))
        lead = await leads.update(
            self._pool, caller(), request.id, draft, paths, request.etag, self._clock()
        )
        return mapping.lead_to_proto(lead)

    async def DeleteLead(
        self, request: sales_pb2.DeleteLeadRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await leads.delete(self._pool, caller(), request.id, request.etag, self._clock())
        return empty_pb2.Empty()

    async def ListLeads(
        self, request: sales_pb2.ListLeadsRequest, context: Ctx
    ) -> sales_pb2.ListLeadsResponse:
        size = paging.page_size(request.page_size)
        contact = filter_id(request.contact_id)
        if contact is None:
            return sales_pb2.ListLeadsResponse()
        filters = leads.LeadFilter(
            status=mapping.lead_status(request.status, "status"),
            owner_id=text.filter_text(request.owner_id, "owner_id"),
            tag=text.filter_text(request.tag, "tag"),
            contact_id=contact,
        )
        fingerprint = dataclasses.asdict(filters)
        after = paging.decode_page_token(request.page_token, fingerprint, arity=2)
        key = None
        if after is not None:
            score, lead_id = after
            if not isinstance(score, int) or canonical_uuid(str(lead_id)) is None:
                raise invalid_field("page_token", "malformed page token")
            key = (score, str(lead_id))
        rows = await leads.list_page(self._pool, caller().tenant_id, filters, key, size + 1)
        page, token = paging.next_page(
            [mapping.lead_to_proto(x) for x in rows], size, lambda x: [x.score, x.id], fingerprint
        )
        return sales_pb2.ListLeadsResponse(leads=page, next_page_token=token)

    async def ConvertLead(
        self, request: sales_pb2.ConvertLeadRequest, context: Ctx
    ) -> sales_pb2.ConvertLeadResponse:
        deal_draft = None
        if request.create_deal:
            paths = updates.mask_paths([], request.deal, _DEAL_PATHS)
            # Currency is checked even when not sent: it has no default.
            deal_draft = domain.normalize_deal(
                mapping.deal_draft(request.deal), {*paths, "currency"}
            )
        elif request.HasField("deal"):
            raise invalid_field("deal", "a deal is created only with create_deal: true")
        done = await conversion.convert(
            self._pool,
            self._contacts,
            caller(),
            request.id,
            deal_draft,
            request.etag,
            self._clock(),
        )
        return sales_pb2.ConvertLeadResponse(
            lead=mapping.lead_to_proto(done.lead),
            contact_id=done.contact_id,
            contact_created=done.contact_created,
            deal=mapping.deal_to_proto(done.deal) if done.deal else None,
        )

    # --- scoring rules ------------------------------------------------------------------------

    async def CreateScoringRule(
        self, request: sales_pb2.CreateScoringRuleRequest, context: Ctx
    ) -> sales_pb2.ScoringRule:
        draft = mapping.rule_draft(request.scoring_rule)
        rule = await rules.create(self._pool, caller(), draft, self._clock())
        return mapping.rule_to_proto(rule)

    async def GetScoringRule(
        self, request: sales_pb2.GetScoringRuleRequest, context: Ctx
    ) -> sales_pb2.ScoringRule:
        return mapping.rule_to_proto(await rules.get(self._pool, caller().tenant_id, request.id))

    async def UpdateScoringRule(
        self, request: sales_pb2.UpdateScoringRuleRequest, context: Ctx
    ) -> sales_pb2.ScoringRule:
        paths = updates.mask_paths(request.update_mask, request.scoring_rule, _RULE_PATHS)
        draft = mapping.rule_draft(request.scoring_rule)
        rule = await rules.update(
            self._pool, caller(), request.id, draft, paths, request.etag, self._clock()
        )
        return mapping.rule_to_proto(rule)

    async def DeleteScoringRule(
        self, request: sales_pb2.DeleteScoringRuleRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await rules.delete(self._pool, caller(), request.id, request.etag, self._clock())
        return empty_pb2.Empty()

    async def ListScoringRules(
        self, request: sales_pb2.ListScoringRulesRequest, context: Ctx
    ) -> sales_pb2.ListScoringRulesResponse:
        size = paging.page_size(request.page_size)
        after = paging.after_id(request.page_token, {})
        rows = await rules.list_page(self._pool, caller().tenant_id, after, size + 1)
        page, token = paging.next_page(
            [mapping.rule_to_proto(r) for r in rows], size, lambda r: [r.id], {}
        )
        return sales_pb2.ListScoringRulesResponse(scoring_rules=page, next_page_token=token)

    # --- pipelines ----------------------------------------------------------------------------

    async def CreatePipeline(
        self, request: sales_pb2.CreatePipelineRequest, context: Ctx
    ) -> sales_pb2.Pipeline:
        draft = domain.normalize_pipeline(mapping.pipeline_draft(request.pipeline), _PIPELINE_PATHS)
        pipeline = await pipelines.create(self._pool, caller(), draft, self._clock())
        return mapping.pipeline_to_proto(pipeline)

    async def GetPipeline(
        self, request: sales_pb2.GetPipelineRequest, context: Ctx
    ) -> sales_pb2.Pipeline:
        pipeline = await pipelines.get(self._pool, caller().tenant_id, request.id)
        return mapping.pipeline_to_proto(pipeline)

    async def UpdatePipeline(
        self, request: sales_pb2.UpdatePipelineRequest, context: Ctx
    ) -> sales_pb2.Pipeline:
        paths = updates.mask_paths(request.update_mask, request.pipeline, _PIPELINE_PATHS)
        draft = mapping.pipeline_draft(request.pipeline)
        draft = domain.normalize_pipeline(draft, updates.top_level(paths))
        pipeline = await pipelines.update(
            self._pool, caller(), request.id, draft, paths, request.etag, self._clock()
        )
        return mapping.pipeline_to_proto(pipeline)

    async def DeletePipeline(
        self, request: sales_pb2.DeletePipelineRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await pipelines.delete(self._pool, caller(), request.id, request.etag)
        return empty_pb2.Empty()

    async def ListPipelines(
        self, request: sales_pb2.ListPipelinesRequest, context: Ctx
    ) -> sales_pb2.ListPipelinesResponse:
        size = paging.page_size(request.page_size)
        after = paging.after_id(request.page_token, {})
        rows = await pipelines.list_page(
            self._pool, caller().tenant_id, after, size + 1, self._clock()
        )
        page, token = paging.next_page(
            [mapping.pipeline_to_proto(p) for p in rows], size, lambda p: [p.id], {}
        )
        return sales_pb2.ListPipelinesResponse(pipelines=page, next_page_token=token)

    # --- deals --------------------------------------------------------------------------------

    async def CreateDeal(
        self, request: sales_pb2.CreateDealRequest, context: Ctx
    ) -> sales_pb2.Deal:
        draft = domain.normalize_deal(mapping.deal_draft(request.deal), _DEAL_PATHS)
        deal = await deals.create(self._pool, caller(), draft, self._clock())
        return mapping.deal_to_proto(deal)

    async def GetDeal(self, request: sales_pb2.GetDealRequest, context: Ctx) -> sales_pb2.Deal:
        return mapping.deal_to_proto(await deals.get(self._pool, caller().tenant_id, request.id))

    async def UpdateDeal(
        self, request: sales_pb2.UpdateDealRequest, context: Ctx
    ) -> sales_pb2.Deal:
        paths = updates.mask_paths(request.update_mask, request.deal, _DEAL_PATHS)
        draft = domain.normalize_deal(mapping.deal_draft(request.deal), updates.top_level(paths))
        deal = await deals.update(
            self._pool, caller(), request.id, draft, paths, request.etag, self._clock()
        )
        return mapping.deal_to_proto(deal)

    async def DeleteDeal(
        self, request: sales_pb2.DeleteDealRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await deals.delete(self._pool, caller(), request.id, request.etag, self._clock())
        return empty_pb2.Empty()

    async def ListDeals(
        self, request: sales_pb2.ListDealsRequest, context: Ctx
    ) -> sales_pb2.ListDealsResponse:
        size = paging.page_size(request.page_size)
        ids = [filter_id(v) for v in (request.pipeline_id, request.stage_id, request.contact_id)]
        if None in ids:
            return sales_pb2.ListDealsResponse()
        pipeline_id, stage_id, contact_id = (str(i) for i in ids)
        filters = deals.DealFilter(
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            owner_id=text.filter_text(request.owner_id, "owner_id"),
            contact_id=contact_id,
        )
        fingerprint = dataclasses.asdict(filters)
        after = paging.after_id(request.page_token, fingerprint)
        rows = await deals.list_page(self._pool, caller().tenant_id, filters, after, size + 1)
        page, token = paging.next_page(
            [mapping.deal_to_proto(d) for d in rows], size, lambda d: [d.id], fingerprint
        )
        return sales_pb2.ListDealsResponse(deals=page, next_page_token=token)

    async def ListStageChanges(
        self, request: sales_pb2.ListStageChangesRequest, context: Ctx
    ) -> sales_pb2.ListStageChangesResponse:
        size = paging.page_size(request.page_size)
        fingerprint: dict[str, object] = {"deal_id": request.deal_id}
        after = paging.decode_page_token(request.page_token, fingerprint, arity=1)
        if after is not None and not isinstance(after[0], int):
            raise invalid_field("page_token", "malformed page token")
        rows = await deals.stage_changes(
            self._pool,
            caller().tenant_id,
            request.deal_id,
            int(after[0]) if after else None,
            size + 1,
        )
        page, token = paging.next_page(rows, size, lambda c: [c.deal_version], fingerprint)
        return sales_pb2.ListStageChangesResponse(stage_changes=page, next_page_token=token)

    # --- activities ---------------------------------------------------------------------------

    async def CreateActivity(
        self, request: sales_pb2.CreateActivityRequest, context: Ctx
    ) -> sales_pb2.Activity:
        draft = domain.normalize_activity(mapping.activity_draft(request.activity), _ACTIVITY_PATHS)
        activity = await activities.create(self._pool, caller(), draft, self._clock())
        return mapping.activity_to_proto(activity)

    async def GetActivity(
        self, request: sales_pb2.GetActivityRequest, context: Ctx
    ) -> sales_pb2.Activity:
        activity = await activities.get(self._pool, caller().tenant_id, request.id)
        return mapping.activity_to_proto(activity)

    async def UpdateActivity(
        self, request: sales_pb2.UpdateActivityRequest, context: Ctx
    ) -> sales_pb2.Activity:
        paths = updates.mask_paths(request.update_mask, request.activity, _ACTIVITY_PATHS)
        draft = mapping.activity_draft(request.activity)
        draft = domain.normalize_activity(draft, updates.top_level(paths))
        activity = await activities.update(
            self._pool, caller(), request.id, draft, paths, request.etag, self._clock()
        )
        return mapping.activity_to_proto(activity)

    async def DeleteActivity(
        self, request: sales_pb2.DeleteActivityRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await activities.delete(self._pool, caller(), request.id, request.etag)
        return empty_pb2.Empty()

    async def ListActivities(
        self, request: sales_pb2.ListActivitiesRequest, context: Ctx
    ) -> sales_pb2.ListActivitiesResponse:
        size = paging.page_size(request.page_size)
        lead_id, deal_id = filter_id(request.lead_id), filter_id(request.deal_id)
        if lead_id is None or deal_id is None:
            return sales_pb2.ListActivitiesResponse()
        filters = activities.ActivityFilter(
            lead_id=lead_id,
            deal_id=deal_id,
            owner_id=text.filter_text(request.owner_id, "owner_id"),
            kind=mapping.activity_kind(request.kind, "kind"),
            done=request.done if request.HasField("done") else None,
        )
        fingerprint = dataclasses.asdict(filters)
        after = paging.after_id(request.page_token, fingerprint)
        rows = await activities.list_page(self._pool, caller().tenant_id, filters, after, size + 1)
        page, token = paging.next_page(
            [mapping.activity_to_proto(a) for a in rows], size, lambda a: [a.id], fingerprint
        )
        return sales_pb2.ListActivitiesResponse(activities=page, next_page_token=token)

    # --- forecast and reports -----------------------------------------------------------------

    async def GetForecast(
        self, request: sales_pb2.GetForecastRequest, context: Ctx
    ) -> sales_pb2.Forecast:
        out: list[Violation] = []
        first = domain.parse_date(request.start_date, "start_date", out)
        last = domain.parse_date(request.end_date, "end_date", out)
        period = mapping.period(request.period)
        if out:
            raise Invalid(out)
        start, end = reports.checked_range(first, last, "start_date", "end_date")
        pipeline_id = filter_id(request.pipeline_id)
        if pipeline_id is None:
            return sales_pb2.Forecast()
        return await reports.forecast(
            self._pool,
            caller().tenant_id,
            period,
            start,
            end,
            text.filter_text(request.owner_id, "owner_id"),
            pipeline_id,
        )

    async def GetFunnelReport(
        self, request: sales_pb2.GetFunnelReportRequest, context: Ctx
    ) -> sales_pb2.FunnelReport:
        start, end = reports.checked_range(
            protomap.time_from_proto(request, "start_time"),
            protomap.time_from_proto(request, "end_time"),
            "start_time",
            "end_time",
        )
        pipeline_id = request.pipeline_id.strip()
        if pipeline_id:
            pipeline_id = canonical_uuid(pipeline_id) or ""
            if not pipeline_id:
                raise invalid_field("pipeline_id", "no such pipeline")
        return await reports.funnel(
            self._pool, caller().tenant_id, pipeline_id, start, end, self._clock()
        )

    async def GetWinRateReport(
        self, request: sales_pb2.GetWinRateReportRequest, context: Ctx
    ) -> sales_pb2.WinRateReport:
        start, end = reports.checked_range(
            protomap.time_from_proto(request, "start_time"),
            protomap.time_from_proto(request, "end_time"),
            "start_time",
            "end_time",
        )
        pipeline_id = filter_id(request.pipeline_id)
        if pipeline_id is None:
            return sales_pb2.WinRateReport()
        return await reports.win_rate(
            self._pool,
            caller().tenant_id,
            start,
            end,
            text.filter_text(request.owner_id, "owner_id"),
            pipeline_id,
        )
