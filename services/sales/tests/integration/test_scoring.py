"""Lead scores: explained by their factors, re-scored on every cause, decaying on the clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from crm.sales.v1 import sales_pb2
from crmkit.ids import new_id

from .support import Running, Tenant, create_lead, create_rule

OP = sales_pb2.Operator
FIT, ENGAGEMENT = sales_pb2.RULE_KIND_FIT, sales_pb2.RULE_KIND_ENGAGEMENT
TICKET = "crm.support.ticket.created.v1"


def cond(field: str, op: int, *values: str) -> sales_pb2.Condition:
    return sales_pb2.Condition(field=field, operator=op, values=values)  # type: ignore[arg-type]


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _get(service: Running, tenant: Tenant, lead_id: str) -> sales_pb2.Lead:
    return await service.stub.GetLead(sales_pb2.GetLeadRequest(id=lead_id), metadata=tenant.md())


async def test_fit_factors_add_up_and_a_rule_change_rescores(
    service: Running, tenant: Tenant
) -> None:
    big = await create_rule(
        service,
        tenant,
        label="Large company",
        kind=FIT,
        points=15,
        conditions=[cond("company_size", OP.OPERATOR_GT, "200")],
    )
    free = await create_rule(
        service,
        tenant,
        label="Free mail",
        kind=FIT,
        points=-20,
        conditions=[cond("email_domain", OP.OPERATOR_IN, "gmail.com", "yahoo.com")],
    )
    await create_rule(
        service,
        tenant,
        label="Webinar",
        kind=FIT,
        points=7,
        conditions=[
            cond("source", OP.OPERATOR_EQ, "webinar"),
            cond("tags", OP.OPERATOR_CONTAINS, "vip"),
        ],
    )
    lead = await create_lead(
        service,
        tenant,
        first_name="Ada",
        email="ada@GMAIL.com",
        company_size=500,
        source="Webinar",
        tags=["vip"],
    )
    assert lead.score == 2
    assert sum(f.points for f in lead.score_factors) == lead.score
    assert {(f.label, f.points) for f in lead.score_factors} == {
        ("Large company", 15),
        ("Free mail", -20),
        ("Webinar", 7),
    }

    await service.stub.UpdateScoringRule(
        sales_pb2.UpdateScoringRuleRequest(
            id=big.id, scoring_rule=sales_pb2.ScoringRule(points=40), update_mask=["points"]
        ),
        metadata=tenant.md(),
    )
    assert (await _get(service, tenant, lead.id)).score == 27
    await service.stub.DeleteScoringRule(
        sales_pb2.DeleteScoringRuleRequest(id=free.id), metadata=tenant.md()
    )
    rescored = await _get(service, tenant, lead.id)
    assert rescored.score == 47
    assert sum(f.points for f in rescored.score_factors) == 47

    # A change of the lead re-scores it too.
    changed = await service.stub.UpdateLead(
        sales_pb2.UpdateLeadRequest(id=lead.id, lead=sales_pb2.Lead(company_size=10)),
        metadata=tenant.md(),
    )
    assert changed.score == 7


async def test_lists_order_by_score(service: Running, tenant: Tenant) -> None:
    await create_rule(
        service,
        tenant,
        label="Size",
        kind=FIT,
        points=10,
        conditions=[cond("company_size", OP.OPERATOR_GTE, "100")],
    )
    await create_rule(
        service,
        tenant,
        label="CTO",
        kind=FIT,
        points=5,
        conditions=[cond("title", OP.OPERATOR_EQ, "cto")],
    )
    low = await create_lead(service, tenant, first_name="Low")
    top = await create_lead(service, tenant, first_name="Top", company_size=100, title="CTO")
    mid = await create_lead(service, tenant, first_name="Mid", company_size=300)
    seen, token = [], ""
    while True:
        page = await service.stub.ListLeads(
            sales_pb2.ListLeadsRequest(page_size=2, page_token=token), metadata=tenant.md()
        )
        seen += [(x.id, x.score) for x in page.leads]
        token = page.next_page_token
        if not token:
            break
    assert seen == [(top.id, 15), (mid.id, 10), (low.id, 0)]


async def test_an_engagement_event_counts_once_and_decays(service: Running, tenant: Tenant) -> None:
    contact_id = new_id()
    rule = await create_rule(
        service,
        tenant,
        label="Ticket opened",
        kind=ENGAGEMENT,
        points=10,
        event_type=TICKET,
        contact_field="ticket.contact_id",
        half_life_days=30,
        conditions=[cond("ticket.priority", OP.OPERATOR_IN, "HIGH", "URGENT")],
    )
    lead = await create_lead(service, tenant, first_name="Eve", contact_id=contact_id)
    marker = await create_lead(service, tenant, first_name="Marker", contact_id=new_id())
    ticket = {"ticket": {"id": new_id(), "contact_id": contact_id, "priority": "HIGH"}}
    first = await service.publish(tenant.id, TICKET, new_id(), 1, ticket)
    # The same event delivered again, a low-priority ticket that does not match, then a marker.
    await service.publish(tenant.id, TICKET, new_id(), 1, ticket, event_id=first)
    low = {"ticket": {"id": new_id(), "contact_id": contact_id, "priority": "LOW"}}
    await service.publish(tenant.id, TICKET, new_id(), 1, low)
    await service.publish(
        tenant.id,
        TICKET,
        new_id(),
        1,
        {"ticket": {"id": new_id(), "contact_id": marker.contact_id, "priority": "URGENT"}},
    )

    async def marked() -> bool:
        return (await _get(service, tenant, marker.id)).score == 10

    await until(marked, "the marker event")
    counted = await _get(service, tenant, lead.id)
    assert counted.score == 10
    assert [(f.rule_id, f.points, f.events) for f in counted.score_factors] == [(rule.id, 10, 1)]

    # Thirty days on (one half-life), the re-scoring worker halves the points.
    service.clock.advance(timedelta(days=30))

    async def halved() -> bool:
        return (await _get(service, tenant, lead.id)).score == 5

    await until(halved, "decay to 5 points")
    service.clock.advance(timedelta(days=-30))
