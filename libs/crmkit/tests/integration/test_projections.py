"""Projections keep another service's records right whatever the delivery order; the chassis
tables' retention and tenant checks."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

from nats.js import JetStreamContext

from crmkit import bus, db, housekeeping, projections
from crmkit.consumer import Consumer, Event
from crmkit.ids import new_id

from .test_consumer import FAST, headers_for, unique_name


def event(tenant: str, record: str, version: int) -> Event:
    return Event(
        id=new_id(),
        type="crm.contacts.contact.updated.v1",
        source="/trellis/test",
        subject=record,
        tenant_id=tenant,
        record_version=version,
        time="",
        data={},
        nats_subject="",
        headers={},
    )


async def test_only_newer_versions_are_applied(pool: db.Pool, h: Any) -> None:
    tenant, record = new_id(), new_id()
    order = [3, 1, 3, 2, 5, 4]  # out of order, with a repeat
    applied = []
    for version in order:
        async with db.tenant_tx(pool, tenant) as conn:
            if await projections.advance(conn, "contacts", event(tenant, record, version)):
                applied.append(version)
    assert applied == [3, 5]
    assert h.counter("trellis_projection_stale_events_total", projection="contacts") >= 4
    # Projections are kept per tenant and per projection.
    other = event(new_id(), record, 1)
    async with db.tenant_tx(pool, other.tenant_id) as conn:
        assert await projections.advance(conn, "contacts", other)
    async with db.tenant_tx(pool, tenant) as conn:
        assert await projections.advance(
            conn, "deals", dataclasses.replace(other, tenant_id=tenant)
        )


async def test_an_event_whose_tenant_disagrees_with_its_subject_is_dead_lettered(
    pool: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant, intruder, name = new_id(), new_id(), unique_name()
    handled: list[Event] = []

    async def handler(e: Event, conn: db.Conn) -> None:
        handled.append(e)

    consumer = Consumer(
        js, pool, name=name, filter_subjects=[f"crm.events.{tenant}.>"], handler=handler, **FAST
    )
    subject = bus.event_subject(tenant, "contacts", "contact", "updated")
    async with h.running(consumer):
        # Claims another tenant in its header, on this tenant's subject: refused.
        await js.publish(subject, b"{}", headers=headers_for(new_id(), intruder))
        marker = new_id()
        await js.publish(subject, json.dumps({}).encode(), headers=headers_for(marker, tenant))
        await h.eventually(
            lambda: [e for e in handled if e.id == marker], within=10, what="the marker"
        )
        [parked] = await h.eventually(
            lambda: h.stream_messages(js, bus.DLQ_STREAM, f"crm.dlq.{name}.>"),
            within=10,
            what="the dead letter",
        )
    assert [e.id for e in handled] == [marker]
    assert handled[0].tenant_id == tenant
    assert "disagrees with subject" in parked.headers["dlq-error"]


async def test_retention_purges_old_chassis_rows_of_every_tenant(
    pool: db.Pool, owner: db.Pool, h: Any
) -> None:
    old, new = new_id(), new_id()
    async with owner.connection() as conn:
        await conn.execute(
            "INSERT INTO inbox (tenant_id, consumer, event_id, processed_at) VALUES"
            " (%s, 'c', %s, now() - interval '40 days'), (%s, 'c', %s, now())",
            (new_id(), old, new_id(), new),
        )
        await conn.execute(
            "INSERT INTO idempotency_records (tenant_id, principal, key, method, request_hash,"
            " response, created_at) VALUES (%s, 'p', 'k', 'm', '', '', now() - interval '2 days')",
            (new_id(),),
        )
    removed = await housekeeping.purge(pool, housekeeping.Retention(inbox=timedelta(days=30)))
    assert removed == {"outbox": 0, "inbox": 1, "idempotency": 1}
    assert await h.scalar(owner, "SELECT array_agg(event_id) FROM inbox") == [new]
