"""The support report on a fixed data set, against figures worked out by hand."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf import duration_pb2

from crm.support.v1 import support_pb2 as pb
from trellis_devstack.testing import eventually

from .harness import HOUR, Platform, Tenant, new_policy, new_ticket, reply, set_status, targets


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=value))
    return d


async def test_report_figures_equal_the_hand_computed_ones(
    platform: Platform, tenant: Tenant
) -> None:
    clock, stub, md = platform.clock, platform.stub, tenant.md()
    await new_policy(platform, tenant, targets=targets(first_response=HOUR, resolution=4 * HOUR))
    high, low = pb.PRIORITY_HIGH, pb.PRIORITY_LOW

    async def rate(ticket_id: str, rating: int) -> None:
        await stub.RateTicket(pb.RateTicketRequest(id=ticket_id, rating=rating), metadata=md)

    t = clock.next(0, 0) + timedelta(hours=1)  # the range is [t, t + 8 h)
    e = await new_ticket(platform, tenant, subject="E", priority=high, team="t1")  # t - 1 h
    clock.advance(hours=1)
    a = await new_ticket(platform, tenant, subject="A", priority=high, team="t1")  # t
    clock.advance(minutes=30)
    await reply(platform, tenant, a.id)  # A: first response 30 min
    clock.advance(minutes=30)
    b = await new_ticket(platform, tenant, subject="B", priority=high, team="t1")  # t + 1 h
    clock.advance(hours=1)
    await set_status(platform, tenant, a.id, pb.TICKET_STATUS_SOLVED)  # A: resolved in 2 h
    clock.advance(minutes=30)
    await reply(platform, tenant, b.id)  # B: first response 1.5 h (breached)
    clock.advance(minutes=30)
    await rate(a.id, 5)  # t + 3 h
    c = await new_ticket(platform, tenant, subject="C", priority=low, team="t2")
    clock.advance(minutes=10)
    await reply(platform, tenant, c.id)  # C: first response 10 min
    clock.advance(minutes=10)
    await set_status(platform, tenant, c.id, pb.TICKET_STATUS_PENDING)  # t + 3 h 20 min
    clock.advance(minutes=40)
    d = await new_ticket(platform, tenant, subject="D", priority=low)  # t + 4 h, no team
    clock.advance(hours=2)
    await set_status(platform, tenant, b.id, pb.TICKET_STATUS_SOLVED)  # B: 5 h (breached)
    clock.advance(minutes=30)
    await rate(b.id, 2)  # t + 6 h 30 min
    clock.advance(hours=2, minutes=30)
    f = await new_ticket(platform, tenant, subject="F", priority=high, team="t1")  # t + 9 h

    async def d_resolution_breached() -> bool:
        rows = await platform.db.rows(
            "SELECT 1 FROM sla_timers WHERE ticket_id = %s AND target = 'resolution'"
            " AND kind = 'breach' AND fired_at IS NOT NULL",
            d.id,
        )
        return bool(rows)

    await eventually(d_resolution_breached, "D's resolution breach (due t + 8 h)", within=20)
    assert e.id
    assert f.id

    request = pb.GetSupportReportRequest()
    request.start_time.FromDatetime(t)
    request.end_time.FromDatetime(t + timedelta(hours=8))
    report = await stub.GetSupportReport(request, metadata=md)

    t1 = pb.ResponseTimes(
        tickets=2,
        responded=2,
        first_response_median=seconds(3600),  # of 1800 and 5400
        first_response_p90=seconds(5040),  # 1800 + 0.9 * 3600
        resolved=2,
        resolution_median=seconds(12600),  # of 7200 and 18000
        resolution_p90=seconds(16920),  # 7200 + 0.9 * 10800
    )
    assert list(report.by_priority) == [
        pb.ResponseTimes(
            group="LOW",
            tickets=2,
            responded=1,
            first_response_median=seconds(600),
            first_response_p90=seconds(600),
        ),
        grouped(t1, "HIGH"),
    ]
    assert list(report.by_team) == [
        pb.ResponseTimes(group="", tickets=1),
        grouped(t1, "t1"),
        pb.ResponseTimes(
            group="t2",
            tickets=1,
            responded=1,
            first_response_median=seconds(600),
            first_response_p90=seconds(600),
        ),
    ]
    # First response: A and C met, B and D breached. Resolution: A met, B and D breached, C
    # still running (pending). E and F are outside the range.
    assert list(report.sla_compliance) == [
        pb.SlaCompliance(target=pb.SLA_TARGET_FIRST_RESPONSE, met=2, breached=2, compliance=0.5),
        pb.SlaCompliance(target=pb.SLA_TARGET_RESOLUTION, met=1, breached=2, compliance=1 / 3),
    ]
    # At t + 8 h: E and D new, C pending; A and B solved; F did not exist.
    assert {s.status: s.tickets for s in report.backlog} == {
        pb.TICKET_STATUS_NEW: 2,
        pb.TICKET_STATUS_OPEN: 0,
        pb.TICKET_STATUS_PENDING: 1,
        pb.TICKET_STATUS_ON_HOLD: 0,
    }
    assert (report.csat.ratings, report.csat.average) == (2, 3.5)


def grouped(times: pb.ResponseTimes, group: str) -> pb.ResponseTimes:
    found = pb.ResponseTimes()
    found.CopyFrom(times)
    found.group = group
    return found
