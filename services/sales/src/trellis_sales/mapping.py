"""Protobuf <-> domain values: the api maps requests and replies with it, the stores events."""

from __future__ import annotations

from datetime import date
from enum import Enum
from typing import Any, TypeVar

from crm.sales.v1 import sales_pb2
from crmkit.errors import Invalid, invalid_field
from crmkit.protomap import (
    custom_from_proto,
    custom_to_proto,
    known_enum,
    proto_name,
    stamp,
    time_from_proto,
)
from trellis_sales import scoring
from trellis_sales.domain import (
    Activity,
    ActivityFields,
    ActivityKind,
    ContactSummary,
    Deal,
    DealFields,
    ForecastCategory,
    Lead,
    LeadFields,
    LeadStatus,
    Meta,
    Period,
    Pipeline,
    PipelineFields,
    Stage,
    StageKind,
    parse_date,
)
from trellis_sales.scoring import Condition, Factor, Operator, Rule, RuleFields, RuleKind

E = TypeVar("E", bound=Enum)
V = TypeVar("V", bound=int)  # a proto enum's ValueType


# --- enums ------------------------------------------------------------------------------------


def lead_status(number: sales_pb2.LeadStatus.ValueType, path: str) -> LeadStatus | None:
    return known_enum(sales_pb2.LeadStatus.Name, number, "LEAD_STATUS_", LeadStatus, path)


def activity_kind(number: sales_pb2.ActivityKind.ValueType, path: str) -> ActivityKind | None:
    return known_enum(sales_pb2.ActivityKind.Name, number, "ACTIVITY_KIND_", ActivityKind, path)


def period(number: sales_pb2.Period.ValueType) -> Period:
    found = known_enum(sales_pb2.Period.Name, number, "PERIOD_", Period, "period")
    if found is None:
        raise invalid_field("period", "must be MONTH or QUARTER")
    return found


# --- shared pieces ----------------------------------------------------------------------------


def _meta(msg: Any, meta: Meta) -> None:
    msg.id = meta.id
    msg.version = meta.version
    msg.etag = meta.etag
    msg.create_time.FromDatetime(meta.create_time)
    msg.update_time.FromDatetime(meta.update_time)


def _date(value: date | None) -> str:
    return value.isoformat() if value is not None else ""


def summary_to_proto(summary: ContactSummary | None) -> sales_pb2.ContactSummary | None:
    if summary is None:
        return None
    return sales_pb2.ContactSummary(
        id=summary.id,
        first_name=summary.first_name,
        last_name=summary.last_name,
        email=summary.email,
        company_id=summary.company_id,
        company_name=summary.company_name,
    )


# --- leads ------------------------------------------------------------------------------------


def lead_draft(msg: sales_pb2.Lead, path: str = "lead") -> LeadFields:
    return LeadFields(
        first_name=msg.first_name,
        last_name=msg.last_name,
        email=msg.email,
        phone=msg.phone,
        company_name=msg.company_name,
        company_size=msg.company_size,
        title=msg.title,
        source=msg.source,
        contact_id=msg.contact_id,
        owner_id=msg.owner_id,
        status=lead_status(msg.status, f"{path}.status"),
        tags=tuple(msg.tags),
        custom_fields=custom_from_proto(msg.custom_fields),
    )


def factor_to_proto(factor: Factor) -> sales_pb2.ScoreFactor:
    return sales_pb2.ScoreFactor(
        rule_id=factor.rule_id,
        label=factor.label,
        kind=sales_pb2.RuleKind.Value(proto_name(factor.kind, "RULE_KIND_")),
        points=factor.points,
        events=factor.events,
    )


def lead_to_proto(lead: Lead) -> sales_pb2.Lead:
    f = lead.fields
    msg = sales_pb2.Lead(
        first_name=f.first_name,
        last_name=f.last_name,
        email=f.email,
        phone=f.phone,
        company_name=f.company_name,
        company_size=f.company_size,
        title=f.title,
        source=f.source,
        contact_id=f.contact_id,
        owner_id=f.owner_id,
        status=sales_pb2.LeadStatus.Value(proto_name(f.status, "LEAD_STATUS_")),
        tags=f.tags,
        score=lead.score.points,
        score_factors=[factor_to_proto(x) for x in lead.score.factors],
        contact=summary_to_proto(lead.contact),
        converted_deal_id=lead.converted_deal_id,
    )
    _meta(msg, lead.meta)
    msg.score_time.FromDatetime(lead.score_time)
    stamp(msg.convert_time, lead.convert_time)
    custom_to_proto(f.custom_fields, msg.custom_fields)
    return msg


# --- scoring rules ----------------------------------------------------------------------------


def rule_draft(msg: sales_pb2.ScoringRule, path: str = "scoring_rule") -> RuleFields:
    conditions = tuple(
        Condition(
            field=c.field,
            operator=known_enum(
                sales_pb2.Operator.Name,
                c.operator,
                "OPERATOR_",
                Operator,
                f"{path}.conditions[{i}].operator",
            ),
            values=tuple(c.values),
        )
        for i, c in enumerate(msg.conditions)
    )
    return RuleFields(
        label=msg.label,
        kind=known_enum(sales_pb2.RuleKind.Name, msg.kind, "RULE_KIND_", RuleKind, f"{path}.kind"),
        points=msg.points,
        conditions=conditions,
        event_type=msg.event_type,
        contact_field=msg.contact_field,
        half_life_days=msg.half_life_days,
    )


def rule_to_proto(rule: Rule) -> sales_pb2.ScoringRule:
    f = rule.fields
    msg = sales_pb2.ScoringRule(
        label=f.label,
        kind=sales_pb2.RuleKind.Value(proto_name(f.kind, "RULE_KIND_")),
        points=f.points,
        conditions=[
            sales_pb2.Condition(
                field=c.field,
                operator=sales_pb2.Operator.Value(proto_name(c.operator, "OPERATOR_")),
                values=c.values,
            )
            for c in f.conditions
        ],
        event_type=f.event_type,
        contact_field=f.contact_field,
        half_life_days=f.half_life_days,
    )
    _meta(msg, rule.meta)
    return msg


def conditions_to_json(conditions: tuple[Condition, ...]) -> list[dict[str, Any]]:
    return [
        {"field": c.field, "operator": c.operator.value if c.operator else "", "values": c.values}
        for c in conditions
    ]


def conditions_from_json(raw: list[dict[str, Any]]) -> tuple[Condition, ...]:
    return tuple(Condition(c["field"], Operator(c["operator"]), tuple(c["values"])) for c in raw)


def factors_to_json(factors: tuple[Factor, ...]) -> list[dict[str, Any]]:
    return [
        {
            "rule_id": x.rule_id,
            "label": x.label,
            "kind": x.kind.value,
            "points": x.points,
            "events": x.events,
        }
        for x in factors
    ]


def factors_from_json(raw: list[dict[str, Any]]) -> tuple[Factor, ...]:
    return tuple(
        Factor(x["rule_id"], x["label"], scoring.RuleKind(x["kind"]), x["points"], x["events"])
        for x in raw
    )


# --- pipelines --------------------------------------------------------------------------------


def pipeline_draft(msg: sales_pb2.Pipeline, path: str = "pipeline") -> PipelineFields:
    stages = []
    for i, s in enumerate(msg.stages):
        kind = known_enum(
            sales_pb2.StageKind.Name, s.kind, "STAGE_KIND_", StageKind, f"{path}.stages[{i}].kind"
        )
        stages.append(Stage(s.id, s.name, s.probability, kind or StageKind.OPEN))
    return PipelineFields(name=msg.name, stages=tuple(stages), is_default=msg.is_default)


def pipeline_to_proto(pipeline: Pipeline) -> sales_pb2.Pipeline:
    f = pipeline.fields
    msg = sales_pb2.Pipeline(
        name=f.name,
        is_default=f.is_default,
        stages=[
            sales_pb2.Stage(
                id=s.id,
                name=s.name,
                probability=s.probability,
                kind=sales_pb2.StageKind.Value(proto_name(s.kind, "STAGE_KIND_")),
            )
            for s in f.stages
        ],
    )
    _meta(msg, pipeline.meta)
    return msg


# --- deals ------------------------------------------------------------------------------------


def deal_draft(msg: sales_pb2.Deal, path: str = "deal") -> DealFields:
    out: list[tuple[str, str]] = []
    close_date = parse_date(msg.close_date, f"{path}.close_date", out)
    if out:
        raise Invalid(out)
    return DealFields(
        name=msg.name,
        amount=msg.amount,
        currency=msg.currency,
        pipeline_id=msg.pipeline_id,
        stage_id=msg.stage_id,
        close_date=close_date,
        owner_id=msg.owner_id,
        contact_id=msg.contact_id,
        company_id=msg.company_id,
        forecast_category=known_enum(
            sales_pb2.ForecastCategory.Name,
            msg.forecast_category,
            "FORECAST_CATEGORY_",
            ForecastCategory,
            f"{path}.forecast_category",
        ),
        custom_fields=custom_from_proto(msg.custom_fields),
    )


def deal_to_proto(deal: Deal) -> sales_pb2.Deal:
    f = deal.fields
    msg = sales_pb2.Deal(
        name=f.name,
        amount=f.amount,
        currency=f.currency,
        pipeline_id=f.pipeline_id,
        stage_id=f.stage_id,
        close_date=_date(f.close_date),
        owner_id=f.owner_id,
        contact_id=f.contact_id,
        company_id=f.company_id,
        forecast_category=sales_pb2.ForecastCategory.Value(
            proto_name(f.forecast_category, "FORECAST_CATEGORY_")
        ),
        lead_id=deal.lead_id,
        contact=summary_to_proto(deal.contact),
    )
    _meta(msg, deal.meta)
    stamp(msg.close_time, deal.close_time)
    custom_to_proto(f.custom_fields, msg.custom_fields)
    return msg


# --- activities -------------------------------------------------------------------------------


def activity_draft(msg: sales_pb2.Activity, path: str = "activity") -> ActivityFields:
    return ActivityFields(
        kind=activity_kind(msg.kind, f"{path}.kind"),
        subject=msg.subject,
        body=msg.body,
        lead_id=msg.lead_id,
        deal_id=msg.deal_id,
        due_time=time_from_proto(msg, "due_time", f"{path}.due_time"),
        done=msg.done,
        owner_id=msg.owner_id,
    )


def activity_to_proto(activity: Activity) -> sales_pb2.Activity:
    f = activity.fields
    msg = sales_pb2.Activity(
        kind=sales_pb2.ActivityKind.Value(proto_name(f.kind, "ACTIVITY_KIND_")),
        subject=f.subject,
        body=f.body,
        lead_id=f.lead_id,
        deal_id=f.deal_id,
        done=f.done,
        owner_id=f.owner_id,
    )
    _meta(msg, activity.meta)
    stamp(msg.due_time, f.due_time)
    stamp(msg.done_time, activity.done_time)
    return msg
