"""SLA policies: kept per tenant in matching order, matched when a ticket opens and again when
a field they match on changes, and each ticket showing its targets, due times, elapsed
business time and breach state."""

from __future__ import annotations

from datetime import timedelta

import grpc

from crm.support.v1 import support_pb2 as pb
from trellis_devstack.testing import failure

from .harness import (
    HOUR,
    Platform,
    Tenant,
    field_errors,
    new_policy,
    new_ticket,
    reply,
    set_status,
    targets,
)


def office_hours(zone: str, **extra: object) -> pb.BusinessHours:
    """Monday to Friday, 09:00-17:00."""
    return pb.BusinessHours(
        time_zone=zone,
        weekly=[
            pb.WorkingHours(day=pb.DayOfWeek.ValueType(d), start="09:00", end="17:00")
            for d in range(1, 6)
        ],
        **extra,  # type: ignore[arg-type]
    )


async def test_policies_are_kept_in_matching_order(platform: Platform, tenant: Tenant) -> None:
    stub, md = platform.stub, tenant.md()
    last = await new_policy(
        platform, tenant, name="Default", position=10, targets=targets(resolution=HOUR)
    )
    first = await new_policy(
        platform,
        tenant,
        name="VIP",
        position=1,
        conditions=pb.SlaConditions(tags=["vip"]),
        targets=targets(first_response=900),
        business_hours=office_hours("Europe/Berlin", holiday_country="DE", holidays=["2030-12-24"]),
    )
    assert first.warning_percent == 80
    assert first.targets.first_response.seconds == 900
    assert first.business_hours.weekly[0].start == "09:00"
    page = await stub.ListSlaPolicies(pb.ListSlaPoliciesRequest(page_size=1), metadata=md)
    assert [p.name for p in page.sla_policies] == ["VIP"]
    rest = await stub.ListSlaPolicies(
        pb.ListSlaPoliciesRequest(page_token=page.next_page_token), metadata=md
    )
    assert [p.name for p in rest.sla_policies] == ["Default"]
    changed = await stub.UpdateSlaPolicy(
        pb.UpdateSlaPolicyRequest(
            id=last.id, sla_policy=pb.SlaPolicy(position=0), update_mask=["position"]
        ),
        metadata=md,
    )
    assert (changed.position, changed.version, changed.name) == (0, 2, "Default")
    listed = await stub.ListSlaPolicies(pb.ListSlaPoliciesRequest(), metadata=md)
    assert [p.name for p in listed.sla_policies] == ["Default", "VIP"]
    stale = await failure(
        stub.DeleteSlaPolicy(pb.DeleteSlaPolicyRequest(id=last.id, etag=last.etag), metadata=md)
    )
    assert stale.code() is grpc.StatusCode.FAILED_PRECONDITION
    await stub.DeleteSlaPolicy(pb.DeleteSlaPolicyRequest(id=last.id), metadata=md)
    gone = await failure(stub.GetSlaPolicy(pb.GetSlaPolicyRequest(id=last.id), metadata=md))
    assert gone.code() is grpc.StatusCode.NOT_FOUND


async def test_policy_writes_need_support_admin(platform: Platform, tenant: Tenant) -> None:
    err = await failure(
        platform.stub.CreateSlaPolicy(
            pb.CreateSlaPolicyRequest(
                sla_policy=pb.SlaPolicy(name="x", targets=targets(resolution=60))
            ),
            metadata=tenant.md("support:read", "support:write"),
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_bad_policies_are_refused_naming_the_fields(
    platform: Platform, tenant: Tenant
) -> None:
    err = await failure(
        new_policy(
            platform,
            tenant,
            name="Bad",
            targets=targets(first_response=0),
            business_hours=pb.BusinessHours(
                time_zone="Nowhere/Land",
                weekly=[pb.WorkingHours(day=pb.DAY_OF_WEEK_MONDAY, start="18:00", end="08:00")],
                holiday_country="ZZ",
            ),
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_errors(err) == {
        "sla_policy.targets.first_response": "must be more than 0s and at most a year",
        "sla_policy.business_hours.time_zone": 'must be an IANA time zone, e.g. "Europe/Berlin"',
        "sla_policy.business_hours.weekly[0].end": "must be after the start",
        "sla_policy.business_hours.holiday_country": "no holiday calendar for this country",
    }
    err = await failure(new_policy(platform, tenant, name="No targets"))
    assert field_errors(err) == {
        "sla_policy.targets": "set at least one of first_response, next_response, resolution"
    }


async def test_tickets_match_by_priority_or_by_tag_in_order(
    platform: Platform, tenant: Tenant
) -> None:
    await new_policy(
        platform,
        tenant,
        name="VIP",
        position=1,
        conditions=pb.SlaConditions(tags=["vip"]),
        targets=targets(first_response=600),
    )
    await new_policy(
        platform,
        tenant,
        name="Urgent",
        position=2,
        conditions=pb.SlaConditions(priorities=[pb.PRIORITY_URGENT]),
        targets=targets(first_response=1800),
    )
    urgent = await new_ticket(platform, tenant, priority=pb.PRIORITY_URGENT)
    vip = await new_ticket(platform, tenant, priority=pb.PRIORITY_URGENT, tags=["vip"])
    low = await new_ticket(platform, tenant, priority=pb.PRIORITY_LOW)
    assert urgent.sla.policy_name == "Urgent"
    assert vip.sla.policy_name == "VIP"
    assert not low.HasField("sla")
    # A change of a field policies match on matches again.
    tagged = await platform.stub.UpdateTicket(
        pb.UpdateTicketRequest(id=low.id, ticket=pb.Ticket(tags=["vip"])), metadata=tenant.md()
    )
    assert tagged.sla.policy_name == "VIP"
    assert tagged.sla.targets[0].target_duration.seconds == 600
    # Another field does not.
    renamed = await platform.stub.UpdateTicket(
        pb.UpdateTicketRequest(id=urgent.id, ticket=pb.Ticket(subject="Renamed")),
        metadata=tenant.md(),
    )
    assert renamed.sla.policy_name == "Urgent"


async def test_a_ticket_shows_its_targets_on_business_hours(
    platform: Platform, tenant: Tenant
) -> None:
    await new_policy(
        platform,
        tenant,
        name="Office",
        targets=targets(first_response=3 * HOUR, resolution=16 * HOUR),
        business_hours=office_hours("UTC"),
    )
    friday = platform.clock.next(4, 15)  # Friday 15:00 UTC
    made = await new_ticket(platform, tenant)
    first, resolution = made.sla.targets
    assert first.target == pb.SLA_TARGET_FIRST_RESPONSE
    assert first.state == pb.SLA_TARGET_STATE_RUNNING
    # 2 h on Friday (15-17), then Monday 09:00 + 1 h.
    assert first.due_time.ToDatetime() == (friday + timedelta(days=3, hours=-5)).replace(
        tzinfo=None
    )
    # 80 % of 3 h = 2.4 h: Monday 09:24.
    assert first.warning_time.ToDatetime() == (
        friday + timedelta(days=3, hours=-6, minutes=24)
    ).replace(tzinfo=None)
    # 16 h: 2 on Friday, 8 on Monday, 6 on Tuesday: Tuesday 15:00.
    assert resolution.due_time.ToDatetime() == (friday + timedelta(days=4)).replace(tzinfo=None)

    # Saturday noon: no business time has passed since Friday 17:00.
    platform.clock.advance(hours=21)
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.sla.targets[0].elapsed.seconds == 2 * HOUR
    # Pending over the weekend and Monday morning: the clock stands; open again Monday 10:00.
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_PENDING)
    platform.clock.advance(hours=46)  # Monday 10:00
    paused = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert paused.sla.targets[0].state == pb.SLA_TARGET_STATE_PAUSED
    assert not paused.sla.targets[0].HasField("due_time")
    reopened = await set_status(platform, tenant, made.id, pb.TICKET_STATUS_OPEN)
    # 1 h left from Monday 10:00: due 11:00 (an hour later than without the pause).
    assert reopened.sla.targets[0].due_time.ToDatetime() == (
        friday + timedelta(days=3, hours=-4)
    ).replace(tzinfo=None)
    platform.clock.advance(minutes=30)
    answered = await reply(platform, tenant, made.id)
    assert answered.id
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    first = got.sla.targets[0]
    assert first.state == pb.SLA_TARGET_STATE_MET
    assert first.elapsed.seconds == 2 * HOUR + 1800
    assert first.completed_time.ToDatetime() == platform.clock().replace(tzinfo=None)


async def test_a_deleted_policy_leaves_matched_tickets_their_targets(
    platform: Platform, tenant: Tenant
) -> None:
    policy = await new_policy(platform, tenant, targets=targets(resolution=HOUR))
    made = await new_ticket(platform, tenant)
    await platform.stub.DeleteSlaPolicy(
        pb.DeleteSlaPolicyRequest(id=policy.id), metadata=tenant.md()
    )
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    assert got.sla.policy_id == policy.id
    assert got.sla.targets[0].target_duration.seconds == HOUR
