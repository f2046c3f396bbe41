"""Consumers against real PostgreSQL and NATS: retries with backoff, dead letters and re-drive,
replicas sharing a durable, re-binding after the consumer or stream disappears, draining."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js import JetStreamContext

from crmkit import bus, db
from crmkit.consumer import Consumer, Event, redrive
from crmkit.ids import new_id

FAST: dict[str, Any] = {"backoff": [0.1, 0.1], "fetch_timeout": 1.0, "info_interval": 0.5}


def headers_for(event_id: str, tenant: str, version: int = 1) -> dict[str, str]:
    return bus.ce_headers(
        event_id=event_id,
        ce_type="crm.contacts.contact.updated.v1",
        source="/trellis/test",
        subject=new_id(),
        tenant_id=tenant,
        time=datetime.now(UTC),
        record_version=version,
        dataschema="urn:trellis:schema:crm.contacts.v1.ContactUpdated",
    )


def unique_name() -> str:
    return f"c{uuid.uuid4().hex[:12]}"


async def publish(
    js: JetStreamContext, tenant: str, data: dict[str, Any], subject: str | None = None
) -> str:
    """An event as the relay would send it (without the relay, to test consumers alone)."""
    event_id = new_id()
    headers = headers_for(event_id, tenant)
    subject = subject or bus.event_subject(tenant, "contacts", "contact", "updated")
    await js.publish(subject, json.dumps(data).encode(), headers=headers)
    return event_id


async def seen(pool: db.Pool, consumer: str) -> list[str]:
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT event_id FROM seen WHERE consumer = %s", (consumer,))
        return [r["event_id"] for r in await cur.fetchall()]


async def record(conn: db.Conn, consumer: str, event: Event, instance: str = "") -> None:
    await conn.execute(
        "INSERT INTO seen (consumer, event_id, instance) VALUES (%s, %s, %s)",
        (consumer, event.id, instance),
    )


async def test_handler_that_fails_twice_has_its_effect_once_on_the_third_delivery(
    pool: db.Pool, js: JetStreamContext, h: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tenant, name = new_id(), unique_name()
    attempts: Counter[str] = Counter()
    received: list[Event] = []

    async def flaky(event: Event, conn: db.Conn) -> None:
        attempts[event.id] += 1
        received.append(event)
        await record(conn, name, event)  # rolled back with the failure
        if attempts[event.id] < 3 and event.data.get("display_name") != "marker":
            raise RuntimeError("transient")

    consumer = Consumer(
        js,
        pool,
        name=name,
        filter_subjects=[f"crm.events.{tenant}.>"],
        handler=flaky,
        **{**FAST, "backoff": [0.3, 0.5]},
    )
    async with h.running(consumer):
        event_id = await publish(js, tenant, {"display_name": "Grace"})
        await h.eventually(lambda: seen(pool, name), within=10, what="the third delivery")
        # A later event through the same consumer: a (wrong) fourth delivery would come first.
        marker = await publish(js, tenant, {"display_name": "marker"})
        await h.eventually(
            lambda: _has(seen(pool, name), marker), within=10, what="the marker event"
        )

    assert await seen(pool, name) == [event_id, marker]
    assert attempts[event_id] == 3
    # Each redelivery was asked for after the backoff of its attempt, not at once.
    delays = [
        r.__dict__["retry_in_seconds"]
        for r in caplog.records
        if r.getMessage() == "event handler failed; will retry"
        and r.__dict__["event_id"] == event_id
    ]
    assert delays == [0.3, 0.5]
    first = received[0]
    assert (first.id, first.type, first.tenant_id, first.source) == (
        event_id,
        "crm.contacts.contact.updated.v1",
        tenant,
        "/trellis/test",
    )
    assert first.data == {"display_name": "Grace"}
    assert first.nats_subject == f"crm.events.{tenant}.contacts.contact.updated"
    assert first.time.endswith("Z")
    assert h.counter("trellis_consumer_messages_total", consumer=name, outcome="retried") == 2
    assert h.counter("trellis_consumer_messages_total", consumer=name, outcome="processed") == 2


async def test_handler_that_always_fails_is_dead_lettered_and_redriven_once_fixed(
    pool: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant, failing, healthy = new_id(), unique_name(), unique_name()
    filters = [f"crm.events.{tenant}.>"]
    attempts: Counter[str] = Counter()
    fixed = False

    async def broken(event: Event, conn: db.Conn) -> None:
        attempts[event.id] += 1
        await record(conn, failing, event)
        if not fixed:
            raise RuntimeError("boom\nwith a second line")

    async def fine(event: Event, conn: db.Conn) -> None:
        await record(conn, healthy, event)

    consumers = [
        Consumer(
            js, pool, name=failing, filter_subjects=filters, handler=broken, max_deliver=3, **FAST
        ),
        Consumer(js, pool, name=healthy, filter_subjects=filters, handler=fine, **FAST),
    ]
    dlq = f"crm.dlq.{failing}.>"
    async with h.running(*consumers):
        event_id = await publish(js, tenant, {"display_name": "Hopper"})
        [parked] = await h.eventually(
            lambda: h.stream_messages(js, bus.DLQ_STREAM, dlq), within=10, what="a dead letter"
        )
        assert attempts[event_id] == 3
        original = f"crm.events.{tenant}.contacts.contact.updated"
        assert parked.subject == f"crm.dlq.{failing}.{original}"
        assert parked.headers["dlq-error"] == "RuntimeError: boom with a second line"
        assert parked.headers["dlq-consumer"] == failing
        assert parked.headers["dlq-original-subject"] == original
        assert parked.headers["dlq-deliveries"] == "3"
        assert parked.headers["ce-id"] == event_id
        assert json.loads(parked.data) == {"display_name": "Hopper"}
        assert await seen(pool, failing) == []  # every failed attempt rolled back
        assert h.counter("trellis_dead_letter_messages_total", consumer=failing) == 1
        await h.eventually(lambda: seen(pool, healthy), within=5, what="the healthy consumer")

        fixed = True
        assert await redrive(js, failing) == 1
        assert await h.stream_messages(js, bus.DLQ_STREAM, dlq) == []
        await h.eventually(lambda: seen(pool, failing), within=10, what="the re-driven event")
        # The sibling that had already handled it gets the copy too, and skips it.
        await h.eventually(
            lambda: h.counter(
                "trellis_consumer_messages_total", consumer=healthy, outcome="duplicate"
            ),
            within=10,
            what="the healthy consumer to skip the copy",
        )
        assert await redrive(js, failing) == 0

    assert await seen(pool, failing) == [event_id]
    assert await seen(pool, healthy) == [event_id]
    assert attempts[event_id] == 4
    outcomes = {
        o: h.counter("trellis_consumer_messages_total", consumer=failing, outcome=o)
        for o in ("retried", "dead_lettered", "processed", "duplicate")
    }
    assert outcomes == {"retried": 2, "dead_lettered": 1, "processed": 1, "duplicate": 0}


async def test_malformed_messages_go_straight_to_the_dlq(
    pool: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant, name = new_id(), unique_name()
    calls: list[Event] = []

    async def handler(event: Event, conn: db.Conn) -> None:
        calls.append(event)

    subject = bus.event_subject(tenant, "contacts", "contact", "updated")
    consumer = Consumer(
        js, pool, name=name, filter_subjects=[f"crm.events.{tenant}.>"], handler=handler, **FAST
    )
    async with h.running(consumer):
        await js.publish(subject, b"{not json", headers={"Nats-Msg-Id": new_id()})
        await js.publish(subject, b"[1, 2]", headers=headers_for(new_id(), tenant))
        parked = await h.eventually(
            lambda: _at_least(h.stream_messages(js, bus.DLQ_STREAM, f"crm.dlq.{name}.>"), 2),
            within=10,
            what="both malformed messages in the DLQ",
        )
    assert calls == []
    assert [m.headers["dlq-deliveries"] for m in parked] == ["1", "1"]
    assert parked[0].headers["dlq-error"].startswith("MalformedEventError: missing CloudEvents")
    assert parked[1].headers["dlq-error"] == "MalformedEventError: data is not a JSON object"
    assert h.counter("trellis_consumer_messages_total", consumer=name, outcome="dead_lettered") == 2


async def _has(found: Any, event_id: str) -> bool:
    return event_id in await found


async def _at_least(found: Any, n: int) -> Any:
    items = await found
    return items if len(items) >= n else None


async def test_replicas_share_a_durable_and_process_each_event_once(
    pool: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant, name = new_id(), unique_name()

    def replica(instance: str) -> Consumer:
        async def handle(event: Event, conn: db.Conn) -> None:
            await asyncio.sleep(0.005)  # enough work for the other replica to pull meanwhile
            await record(conn, name, event, instance)

        return Consumer(
            js,
            pool,
            name=name,
            filter_subjects=[f"crm.events.{tenant}.>"],
            handler=handle,
            batch=5,
            **FAST,
        )

    ids = set()
    async with h.running(replica("a"), replica("b")):
        for i in range(60):
            ids.add(await publish(js, tenant, {"n": i}))

        async def done() -> bool:
            return len(await seen(pool, name)) >= 60

        await h.eventually(done, within=15, what="60 events across both replicas")
        # A later event: a duplicate effect of the first 60 would be recorded before it.
        ids.add(marker := await publish(js, tenant, {"n": "marker"}))
        await h.eventually(
            lambda: _has(seen(pool, name), marker), within=10, what="the marker event"
        )

    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT instance, count(*) AS n FROM seen WHERE consumer = %s GROUP BY instance",
            (name,),
        )
        per_instance = {r["instance"]: r["n"] for r in await cur.fetchall()}
    assert sorted(await seen(pool, name)) == sorted(ids)
    assert set(per_instance) == {"a", "b"}, per_instance  # both took a share


async def test_consumer_rebinds_after_its_consumer_and_stream_are_deleted(
    pool: db.Pool, js: JetStreamContext, h: Any
) -> None:
    # Its own stream, so deleting it does not disturb the shared CRM_EVENTS.
    tenant, name = new_id(), unique_name()
    stream, prefix = f"T_{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}"
    await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
    subject = f"{prefix}.events.{tenant}.contacts.contact.updated"

    async def handle(event: Event, conn: db.Conn) -> None:
        await record(conn, name, event)

    consumer = Consumer(
        js, pool, name=name, filter_subjects=[f"{prefix}.>"], handler=handle, stream=stream, **FAST
    )
    try:
        async with h.running(consumer):
            first = await publish(js, tenant, {}, subject)
            await h.eventually(lambda: seen(pool, name), within=10, what="the first event")

            await js.delete_consumer(stream, name)
            second = await publish(js, tenant, {}, subject)

            async def has(*ids: str) -> bool:
                return set(await seen(pool, name)) == set(ids)

            await h.eventually(lambda: has(first, second), within=10, what="re-bind (consumer)")
            # The re-created consumer starts over at the first event: the inbox skips it.
            assert (
                h.counter("trellis_consumer_messages_total", consumer=name, outcome="duplicate")
                >= 1
            )

            await js.delete_stream(stream)
            await asyncio.sleep(1.0)  # let it notice, fail to re-bind, and back off
            await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
            third = await publish(js, tenant, {}, subject)
            await h.eventually(
                lambda: has(first, second, third), within=15, what="re-bind (stream)"
            )
    finally:
        await js.delete_stream(stream)
    assert sorted(await seen(pool, name)) == sorted([first, second, third])


async def test_stop_finishes_the_message_in_hand_and_returns_promptly_when_idle(
    pool: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant, name = new_id(), unique_name()
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(event: Event, conn: db.Conn) -> None:
        started.set()
        await release.wait()
        await record(conn, name, event)

    consumer = Consumer(
        js, pool, name=name, filter_subjects=[f"crm.events.{tenant}.>"], handler=slow
    )
    run = asyncio.create_task(consumer.run())
    event_id = await publish(js, tenant, {})
    await asyncio.wait_for(started.wait(), 10)
    order: list[str] = []
    stopping = asyncio.create_task(consumer.stop())
    stopping.add_done_callback(lambda _: order.append("stopped"))
    for _ in range(50):  # every chance to return early, without a clock
        await asyncio.sleep(0)
    order.append("released")
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert order == ["released", "stopped"]  # it waited for the handler, and no longer
    await asyncio.wait_for(run, 5)
    assert await seen(pool, name) == [event_id]

    async def settled() -> bool:
        # An ack is a message to the server, which counts it a moment after stop() returns.
        info = await js.consumer_info(bus.STREAM, name)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    # Acked, not left for redelivery.
    await h.eventually(settled, within=5, what="the ack of the message in hand")

    # Idle, with a ten-minute fetch outstanding: stop() does not wait it out.
    idle = Consumer(
        js,
        pool,
        name=unique_name(),
        filter_subjects=[f"crm.events.{new_id()}.>"],
        handler=slow,
        fetch_timeout=600,
    )
    run = asyncio.create_task(idle.run())
    await h.eventually(lambda: _bound(js, idle.name), within=5, what="the idle consumer to bind")
    await asyncio.wait_for(idle.stop(), 30)
    await asyncio.wait_for(run, 30)


async def _bound(js: JetStreamContext, name: str) -> bool:
    try:
        await js.consumer_info(bus.STREAM, name)
    except Exception:
        return False
    return True


async def test_a_lone_event_is_handled_without_waiting_for_a_full_batch(
    pool: db.Pool, js: JetStreamContext, h: Any
) -> None:
    """A pull for a batch returns only once the batch is full or its wait is over; an idle
    consumer must not hold an event that long (here 60 s, beyond the check's 10)."""
    tenant, name = new_id(), unique_name()

    async def handle(event: Event, conn: db.Conn) -> None:
        await record(conn, name, event)

    consumer = Consumer(
        js,
        pool,
        name=name,
        filter_subjects=[f"crm.events.{tenant}.>"],
        handler=handle,
        batch=50,
        fetch_timeout=60.0,
        info_interval=0.5,
    )
    async with h.running(consumer):
        first = await publish(js, tenant, {"n": 1})
        await h.eventually(lambda: seen(pool, name), within=10, what="the lone event")
        # A backlog is still taken a batch at a time, all of it, in order.
        burst = [await publish(js, tenant, {"n": i}) for i in range(120)]
        await h.eventually(lambda: _has(seen(pool, name), burst[-1]), within=20, what="the burst")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT event_id FROM seen WHERE consumer = %s ORDER BY seen_at", (name,)
        )
        handled = [r["event_id"] for r in await cur.fetchall()]
    assert handled == [first, *burst]
