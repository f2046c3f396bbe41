"""Warnings and breaches: one event per ticket, target and kind when the target passes, also
with the service restarted in between and with two replicas at work; none for a ticket
solved in time.

These tests run their own support processes (replicas) on a database of their own, on the
shared clock, so they can stop and start them. "Nothing more came" is never waited out: each
test waits for a later timer of its own (a marker) and then counts.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY

from crm.support.v1 import support_pb2 as pb
from trellis_devstack import testing
from trellis_devstack.infra import Postgres
from trellis_devstack.testing import Served, eventually
from trellis_support.app import DEFINITION

from .harness import (
    HOUR,
    Database,
    Platform,
    Tenant,
    new_contact,
    new_policy,
    reply,
    set_status,
    start_support,
    support_stub,
    targets,
)

BREACHED = "crm.support.ticket.sla_breached.v1"
WARNED = "crm.support.ticket.sla_warning.v1"


@dataclass
class Own:
    """A support database of this test's own, and how to start replicas on it."""

    app_url: str
    db: Database
    platform: Platform

    def replica(self) -> AbstractAsyncContextManager[Served]:
        p = self.platform
        return start_support(
            self.app_url, p.nats_url, p.contacts.address, p.clock, sla_check_interval_seconds=0.01
        )


@pytest.fixture
async def own(postgres: Postgres, platform: Platform) -> AsyncIterator[Own]:
    name = f"support_sla_{uuid.uuid4().hex[:8]}"
    app_url = await testing.migrated_database(postgres, DEFINITION, name)
    yield Own(app_url, Database(postgres.url(name)), platform)
    postgres.drop_database(name)


async def _ticket(instance: Served, tenant: Tenant, contact_id: str) -> pb.Ticket:
    return await support_stub(instance).CreateTicket(
        pb.CreateTicketRequest(ticket=pb.Ticket(subject="Down", contact_id=contact_id)),
        metadata=tenant.md(),
    )


async def _policy(instance: Served, tenant: Tenant, **seconds: int) -> None:
    await support_stub(instance).CreateSlaPolicy(
        pb.CreateSlaPolicyRequest(sla_policy=pb.SlaPolicy(name="Fast", targets=targets(**seconds))),
        metadata=tenant.md(),
    )


def _fired(events: list[tuple[str, dict[str, object]]]) -> Counter[tuple[str, str, str]]:
    """How often each (ticket, target, kind) went out."""
    found: Counter[tuple[str, str, str]] = Counter()
    for ce_type, data in events:
        ticket = data["ticket"]
        target = data["target"]
        assert isinstance(ticket, dict)
        assert isinstance(target, dict)
        found[(ticket["id"], target["target"], ce_type.split(".")[3])] += 1
    return found


async def _sla_events(db: Database, tenant: Tenant) -> list[tuple[str, dict[str, object]]]:
    return [e for e in await db.events(tenant.id) if e[0] in (BREACHED, WARNED)]


async def _wait_for(
    db: Database, tenant: Tenant, count: int, what: str
) -> Counter[tuple[str, str, str]]:
    async def enough() -> Counter[tuple[str, str, str]] | None:
        fired = _fired(await _sla_events(db, tenant))
        return fired if sum(fired.values()) >= count else None

    found: Counter[tuple[str, str, str]] = await eventually(enough, what, within=20)
    return found


def _breaches(target: str) -> float:
    return REGISTRY.get_sample_value("trellis_sla_breaches_total", {"policy": target}) or 0.0


async def test_one_warning_and_one_breach_per_target_when_it_passes(
    own: Own, tenant: Tenant
) -> None:
    p = own.platform
    contact = (await new_contact(p, tenant)).id
    breaches_before = _breaches("first-response")
    async with own.replica() as support:
        await _policy(support, tenant, first_response=HOUR, resolution=2 * HOUR)
        made = await _ticket(support, tenant, contact)
        p.clock.advance(minutes=48)  # 80 % of the first response
        fired = await _wait_for(own.db, tenant, 1, "the first-response warning")
        assert fired == {(made.id, "SLA_TARGET_FIRST_RESPONSE", "sla_warning"): 1}
        p.clock.advance(minutes=13)  # 61 min: past the first response
        await _wait_for(own.db, tenant, 2, "the first-response breach")
        p.clock.advance(hours=1)  # 2 h 1 min: past the resolution (the marker)
        fired = await _wait_for(own.db, tenant, 4, "the resolution warning and breach")
        got = await support_stub(support).GetTicket(
            pb.GetTicketRequest(id=made.id), metadata=tenant.md()
        )
    assert fired == {
        (made.id, "SLA_TARGET_FIRST_RESPONSE", "sla_warning"): 1,
        (made.id, "SLA_TARGET_FIRST_RESPONSE", "sla_breached"): 1,
        (made.id, "SLA_TARGET_RESOLUTION", "sla_warning"): 1,
        (made.id, "SLA_TARGET_RESOLUTION", "sla_breached"): 1,
    }
    assert [t.state for t in got.sla.targets] == [pb.SLA_TARGET_STATE_BREACHED] * 2
    breach = next(e for t, e in await own.db.events(tenant.id, BREACHED))
    assert breach["target"]["target_duration"] == "3600s"
    assert breach["metadata"]["actor"] == "service:support"
    assert _breaches("first-response") >= breaches_before + 1


async def test_no_breach_for_a_ticket_solved_in_time(own: Own, tenant: Tenant) -> None:
    p = own.platform
    contact = (await new_contact(p, tenant)).id
    async with own.replica() as support:
        await _policy(support, tenant, first_response=HOUR, resolution=2 * HOUR)
        in_time = await _ticket(support, tenant, contact)
        late = await _ticket(support, tenant, contact)
        p.clock.advance(minutes=30)
        await support_stub(support).CreateComment(
            pb.CreateCommentRequest(ticket_id=in_time.id, comment=pb.Comment(body="Fixed.")),
            metadata=tenant.md(),
        )
        await support_stub(support).ChangeTicketStatus(
            pb.ChangeTicketStatusRequest(id=in_time.id, status=pb.TICKET_STATUS_SOLVED),
            metadata=tenant.md(),
        )
        p.clock.advance(hours=3)
        # The marker: the other ticket's resolution breach, the last timer due.
        fired = await _wait_for(own.db, tenant, 4, "the late ticket's warnings and breaches")
    assert {key[0] for key in fired} == {late.id}
    assert set(fired.values()) == {1}


async def test_breaches_fire_once_across_a_restart(own: Own, tenant: Tenant) -> None:
    p = own.platform
    contact = (await new_contact(p, tenant)).id
    async with own.replica() as first:
        await _policy(first, tenant, first_response=HOUR, resolution=3 * HOUR)
        one = await _ticket(first, tenant, contact)
        two = await _ticket(first, tenant, contact)
        p.clock.advance(minutes=61)
        await _wait_for(own.db, tenant, 4, "first-response warnings and breaches")
    # Down while the resolution targets pass (their warnings at 2 h 24 min, breaches at 3 h).
    p.clock.advance(hours=2)
    async with own.replica():
        fired = await _wait_for(own.db, tenant, 8, "resolution timers fired after the restart")
    assert fired == {
        (ticket.id, target, kind): 1
        for ticket in (one, two)
        for target in ("SLA_TARGET_FIRST_RESPONSE", "SLA_TARGET_RESOLUTION")
        for kind in ("sla_warning", "sla_breached")
    }
    rows = await own.db.rows(
        "SELECT count(*) FROM sla_timers WHERE tenant_id = %s AND fired_at IS NOT NULL", tenant.id
    )
    assert rows == [(8,)]


async def test_two_replicas_fire_each_breach_once(own: Own, tenant: Tenant) -> None:
    p = own.platform
    contact = (await new_contact(p, tenant)).id
    async with own.replica() as a, own.replica() as b:
        await _policy(a, tenant, first_response=HOUR, resolution=2 * HOUR)
        made = [await _ticket(replica, tenant, contact) for replica in (a, b) * 10]
        p.clock.advance(minutes=61)
        await _wait_for(own.db, tenant, 40, "first-response warnings and breaches of 20 tickets")
        p.clock.advance(hours=1)  # the marker: every resolution timer
        fired = await _wait_for(own.db, tenant, 80, "resolution warnings and breaches")
    assert len(fired) == 80
    assert set(fired.values()) == {1}
    assert {key[0] for key in fired} == {t.id for t in made}


async def test_a_late_answer_is_a_breach_even_before_the_worker_sees_it(
    own: Own, tenant: Tenant
) -> None:
    p = own.platform
    contact = (await new_contact(p, tenant)).id
    async with own.replica() as support:
        await _policy(support, tenant, first_response=HOUR)
        made = await _ticket(support, tenant, contact)
    # No replica runs while the target passes; the late answer itself judges it breached.
    p.clock.advance(hours=2)
    async with own.replica() as support:
        await support_stub(support).ChangeTicketStatus(
            pb.ChangeTicketStatusRequest(id=made.id, status=pb.TICKET_STATUS_PENDING),
            metadata=tenant.md(),
        )
        fired = await _wait_for(own.db, tenant, 2, "the breach and the warning")
    assert fired == {
        (made.id, "SLA_TARGET_FIRST_RESPONSE", "sla_warning"): 1,
        (made.id, "SLA_TARGET_FIRST_RESPONSE", "sla_breached"): 1,
    }


async def test_a_next_response_round_has_its_own_timers(platform: Platform, tenant: Tenant) -> None:
    await new_policy(platform, tenant, targets=targets(first_response=HOUR, next_response=HOUR))
    contact = (await new_contact(platform, tenant)).id
    made = await platform.stub.CreateTicket(
        pb.CreateTicketRequest(ticket=pb.Ticket(subject="x", contact_id=contact)),
        metadata=tenant.md(),
    )
    await reply(platform, tenant, made.id)
    platform.clock.advance(minutes=10)
    await reply(platform, tenant, made.id, "Still broken", author_type=pb.AUTHOR_TYPE_CONTACT)
    got = await platform.stub.GetTicket(pb.GetTicketRequest(id=made.id), metadata=tenant.md())
    nxt = got.sla.targets[1]
    assert (nxt.target, nxt.cycle, nxt.state) == (
        pb.SLA_TARGET_NEXT_RESPONSE,
        1,
        pb.SLA_TARGET_STATE_RUNNING,
    )
    platform.clock.advance(minutes=61)

    async def breached() -> bool:
        return bool(await platform.db.events(tenant.id, BREACHED))

    await eventually(breached, "the next-response breach", within=20)
    await set_status(platform, tenant, made.id, pb.TICKET_STATUS_PENDING)
    await reply(platform, tenant, made.id, "Try this.")
    (event,) = [e for _, e in await platform.db.events(tenant.id, BREACHED)]
    assert event["target"]["cycle"] == 1
