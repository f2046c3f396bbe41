"""Tenant isolation and bad input on every route: NOT_FOUND for another tenant's ids,
INVALID_ARGUMENT naming the field, nothing written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from crm.sales.v1 import sales_pb2 as pb
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_deal, create_lead, create_rule, default_pipeline


async def _records(service: Running, tenant: Tenant) -> dict[str, str]:
    lead = await create_lead(service, tenant, first_name="Iso")
    deal = await create_deal(service, tenant)
    rule = await create_rule(service, tenant, label="Any", kind=pb.RULE_KIND_FIT, points=1)
    activity = await service.stub.CreateActivity(
        pb.CreateActivityRequest(
            activity=pb.Activity(kind=pb.ACTIVITY_KIND_CALL, subject="Call", lead_id=lead.id)
        ),
        metadata=tenant.md(),
    )
    pipeline = await default_pipeline(service, tenant)
    return {
        "lead": lead.id,
        "deal": deal.id,
        "rule": rule.id,
        "activity": activity.id,
        "pipeline": pipeline.id,
    }


async def test_another_tenants_ids_are_not_found(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    ids = await _records(service, tenant)
    s, md = service.stub, other_tenant.md()
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: s.GetLead(pb.GetLeadRequest(id=ids["lead"]), metadata=md),
        lambda: s.UpdateLead(
            pb.UpdateLeadRequest(id=ids["lead"], lead=pb.Lead(title="x")), metadata=md
        ),
        lambda: s.DeleteLead(pb.DeleteLeadRequest(id=ids["lead"]), metadata=md),
        lambda: s.ConvertLead(pb.ConvertLeadRequest(id=ids["lead"]), metadata=md),
        lambda: s.GetDeal(pb.GetDealRequest(id=ids["deal"]), metadata=md),
        lambda: s.UpdateDeal(
            pb.UpdateDealRequest(id=ids["deal"], deal=pb.Deal(name="x")), metadata=md
        ),
        lambda: s.DeleteDeal(pb.DeleteDealRequest(id=ids["deal"]), metadata=md),
        lambda: s.ListStageChanges(pb.ListStageChangesRequest(deal_id=ids["deal"]), metadata=md),
        lambda: s.GetScoringRule(pb.GetScoringRuleRequest(id=ids["rule"]), metadata=md),
        lambda: s.DeleteScoringRule(pb.DeleteScoringRuleRequest(id=ids["rule"]), metadata=md),
        lambda: s.GetActivity(pb.GetActivityRequest(id=ids["activity"]), metadata=md),
        lambda: s.DeleteActivity(pb.DeleteActivityRequest(id=ids["activity"]), metadata=md),
        lambda: s.GetPipeline(pb.GetPipelineRequest(id=ids["pipeline"]), metadata=md),
        lambda: s.DeletePipeline(pb.DeletePipelineRequest(id=ids["pipeline"]), metadata=md),
    ]
    for call in calls:
        assert (await failure(call())).code() == grpc.StatusCode.NOT_FOUND
    # Linking another tenant's records is refused too, and lists show nothing of them.
    err = await failure(
        s.CreateActivity(
            pb.CreateActivityRequest(
                activity=pb.Activity(kind=pb.ACTIVITY_KIND_NOTE, subject="x", deal_id=ids["deal"])
            ),
            metadata=md,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await failure(create_deal(service, other_tenant, pipeline_id=ids["pipeline"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await s.ListLeads(pb.ListLeadsRequest(), metadata=md)).leads
    assert not (await s.ListDeals(pb.ListDealsRequest(), metadata=md)).deals
    assert not (await s.ListScoringRules(pb.ListScoringRulesRequest(), metadata=md)).scoring_rules
    assert (await service.count("leads", tenant.id), await service.count("deals", tenant.id)) == (
        1,
        1,
    )


BAD: list[tuple[str, str, Any]] = [
    ("lead email", "lead.email", pb.CreateLeadRequest(lead=pb.Lead(email="nope"))),
    ("lead phone", "lead.phone", pb.CreateLeadRequest(lead=pb.Lead(first_name="A", phone="call"))),
    ("lead empty", "lead", pb.CreateLeadRequest(lead=pb.Lead(tags=["x"]))),
    (
        "lead converted",
        "lead.status",
        pb.CreateLeadRequest(lead=pb.Lead(first_name="A", status=pb.LEAD_STATUS_CONVERTED)),
    ),
    ("lead too long", "lead.first_name", pb.CreateLeadRequest(lead=pb.Lead(first_name="x" * 201))),
    (
        "lead size",
        "lead.company_size",
        pb.CreateLeadRequest(lead=pb.Lead(first_name="A", company_size=-1)),
    ),
    (
        "lead control",
        "lead.title",
        pb.CreateLeadRequest(lead=pb.Lead(first_name="A", title="a\x00b")),
    ),
    (
        "deal currency",
        "deal.currency",
        pb.CreateDealRequest(deal=pb.Deal(name="D", currency="ABC")),
    ),
    ("deal no currency", "deal.currency", pb.CreateDealRequest(deal=pb.Deal(name="D"))),
    (
        "deal amount",
        "deal.amount",
        pb.CreateDealRequest(deal=pb.Deal(name="D", currency="EUR", amount=-1)),
    ),
    (
        "deal date",
        "deal.close_date",
        pb.CreateDealRequest(deal=pb.Deal(name="D", currency="EUR", close_date="2025-02-30")),
    ),
    (
        "deal closed",
        "deal.forecast_category",
        pb.CreateDealRequest(
            deal=pb.Deal(name="D", currency="EUR", forecast_category=pb.FORECAST_CATEGORY_CLOSED)
        ),
    ),
    (
        "deal stage",
        "deal.stage_id",
        pb.CreateDealRequest(deal=pb.Deal(name="D", currency="EUR", stage_id="nope")),
    ),
    (
        "rule kind",
        "scoring_rule.kind",
        pb.CreateScoringRuleRequest(scoring_rule=pb.ScoringRule(label="L", points=1)),
    ),
    (
        "rule field",
        "scoring_rule.conditions[0].field",
        pb.CreateScoringRuleRequest(
            scoring_rule=pb.ScoringRule(
                label="L",
                points=1,
                kind=pb.RULE_KIND_FIT,
                conditions=[pb.Condition(field="salary", operator=pb.OPERATOR_EXISTS)],
            )
        ),
    ),
    (
        "rule number",
        "scoring_rule.conditions[0].values[0]",
        pb.CreateScoringRuleRequest(
            scoring_rule=pb.ScoringRule(
                label="L",
                points=1,
                kind=pb.RULE_KIND_FIT,
                conditions=[
                    pb.Condition(field="company_size", operator=pb.OPERATOR_GT, values=["big"])
                ],
            )
        ),
    ),
    (
        "rule event",
        "scoring_rule.event_type",
        pb.CreateScoringRuleRequest(
            scoring_rule=pb.ScoringRule(
                label="L",
                points=1,
                kind=pb.RULE_KIND_ENGAGEMENT,
                event_type="ticket",
                contact_field="c",
            )
        ),
    ),
    (
        "rule points",
        "scoring_rule.points",
        pb.CreateScoringRuleRequest(
            scoring_rule=pb.ScoringRule(label="L", points=5000, kind=pb.RULE_KIND_FIT)
        ),
    ),
    (
        "pipeline stages",
        "pipeline.stages",
        pb.CreatePipelineRequest(pipeline=pb.Pipeline(name="P", stages=[pb.Stage(name="Only")])),
    ),
    (
        "pipeline won",
        "pipeline.stages[1].probability",
        pb.CreatePipelineRequest(
            pipeline=pb.Pipeline(
                name="P",
                stages=[
                    pb.Stage(name="A"),
                    pb.Stage(name="W", probability=50, kind=pb.STAGE_KIND_CLOSED_WON),
                    pb.Stage(name="L", kind=pb.STAGE_KIND_CLOSED_LOST),
                ],
            )
        ),
    ),
    (
        "activity parent",
        "activity",
        pb.CreateActivityRequest(activity=pb.Activity(kind=pb.ACTIVITY_KIND_CALL, subject="s")),
    ),
    ("activity kind", "activity.kind", pb.CreateActivityRequest(activity=pb.Activity(subject="s"))),
    ("page size", "page_size", pb.ListLeadsRequest(page_size=501)),
    ("page token", "page_token", pb.ListDealsRequest(page_token="!!")),
    (
        "forecast period",
        "period",
        pb.GetForecastRequest(start_date="2025-01-01", end_date="2025-02-01"),
    ),
    (
        "forecast range",
        "end_date",
        pb.GetForecastRequest(
            period=pb.PERIOD_MONTH, start_date="2025-01-01", end_date="2024-01-01"
        ),
    ),
    ("funnel range", "start_time", pb.GetFunnelReportRequest()),
]
_METHOD = {
    "CreateLeadRequest": "CreateLead",
    "CreateDealRequest": "CreateDeal",
    "CreateScoringRuleRequest": "CreateScoringRule",
    "CreatePipelineRequest": "CreatePipeline",
    "CreateActivityRequest": "CreateActivity",
    "ListLeadsRequest": "ListLeads",
    "ListDealsRequest": "ListDeals",
    "GetForecastRequest": "GetForecast",
    "GetFunnelReportRequest": "GetFunnelReport",
}


@pytest.mark.parametrize(("case", "field", "request_"), BAD, ids=[c for c, _, _ in BAD])
async def test_bad_input_names_the_field_and_writes_nothing(
    service: Running, tenant: Tenant, case: str, field: str, request_: Any
) -> None:
    method = getattr(service.stub, _METHOD[type(request_).__name__])
    err = await failure(method(request_, metadata=tenant.md()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in (err.details() or ""), err.details()
    for table in ("leads", "deals", "scoring_rules", "activities"):
        assert await service.count(table, tenant.id) == 0


async def test_scopes_are_enforced(service: Running, tenant: Tenant) -> None:
    read_only = tenant.md("sales:read")
    err = await failure(
        service.stub.CreateLead(
            pb.CreateLeadRequest(lead=pb.Lead(first_name="A")), metadata=read_only
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    writer = tenant.md("sales:read", "sales:write")
    rule = pb.CreateScoringRuleRequest(
        scoring_rule=pb.ScoringRule(label="L", points=1, kind=pb.RULE_KIND_FIT)
    )
    err = await failure(service.stub.CreateScoringRule(rule, metadata=writer))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
