"""The outbox and its relay against real PostgreSQL and NATS: what is committed is published,
once, with the CloudEvents envelope and the writer's trace; nothing else is; outages and
re-publishes do not change that."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import psycopg
import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from crm.contacts.v1 import contacts_pb2, events_pb2
from crmkit import bus, db
from crmkit.consumer import Consumer, Event
from crmkit.ids import new_id
from crmkit.outbox import OutboxRelay, write_event
from trellis_devstack.infra import Nats, Postgres

SOURCE = "/trellis/test"


def created(**fields: Any) -> events_pb2.ContactCreated:
    """A contact.created event (any event message of the contract would do)."""
    return events_pb2.ContactCreated(contact=contacts_pb2.Contact(**fields))


async def write(pool: db.Pool, tenant: str, n: int = 1) -> list[str]:
    """`n` events, each in its own committed tenant transaction."""
    ids = []
    for i in range(n):
        async with db.tenant_tx(pool, tenant) as conn:
            ids.append(
                await write_event(
                    conn,
                    created(first_name="Ada", last_name=f"Lovelace {i}"),
                    tenant_id=tenant,
                    record_id=new_id(),
                    record_version=1,
                )
            )
    return ids


def recorder(name: str) -> Any:
    async def handle(event: Event, conn: db.Conn) -> None:
        await conn.execute(
            "INSERT INTO seen (consumer, event_id) VALUES (%s, %s)", (name, event.id)
        )

    return handle


async def test_committed_events_are_published_once_with_envelope_and_trace(
    pool: db.Pool, owner: db.Pool, js: JetStreamContext, spans: InMemorySpanExporter, h: Any
) -> None:
    tenant, record = new_id(), new_id()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /v1/contacts") as request_span:
        async with db.tenant_tx(pool, tenant) as conn:
            event_id = await write_event(
                conn,
                created(first_name="Zoë", tags=["vip"]),
                tenant_id=tenant,
                record_id=record,
                record_version=7,
            )
    trace_id = format(request_span.get_span_context().trace_id, "032x")
    subject = f"crm.events.{tenant}.contacts.contact.created"
    name = f"c{uuid.uuid4().hex[:12]}"
    consumer = Consumer(
        js, pool, name=name, filter_subjects=[f"crm.events.{tenant}.>"], handler=recorder(name)
    )

    async with h.running(OutboxRelay(pool, js, source=SOURCE), consumer):
        await h.eventually(
            lambda: h.scalar(pool, "SELECT count(*) FROM seen WHERE event_id = %s", event_id),
            within=10,
            what="the consumer to process the event",
        )

    [msg] = await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>")
    assert msg.subject == subject
    contact = json.loads(msg.data)["contact"]
    assert (contact["first_name"], contact["tags"]) == ("Zoë", ["vip"])
    # Fields without presence are printed even when empty: a partner sees a cleared field.
    assert (contact["last_name"], contact["emails"], contact["custom_fields"]) == ("", [], {})
    hdrs = msg.headers
    assert {k: hdrs[k] for k in hdrs if k not in ("ce-time", "traceparent", "tracestate")} == {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": SOURCE,
        "ce-type": "crm.contacts.contact.created.v1",
        "ce-subject": record,
        "ce-tenantid": tenant,
        "ce-recordversion": "7",
        "ce-dataschema": "urn:trellis:schema:crm.contacts.v1.ContactCreated",
        "Content-Type": "application/json",
        "content-type": "application/json",
        "Nats-Msg-Id": event_id,
    }
    assert hdrs["ce-time"].endswith("Z")
    datetime.fromisoformat(hdrs["ce-time"])
    _version, header_trace_id, producer_span_id, _flags = hdrs["traceparent"].split("-")
    assert header_trace_id == trace_id

    # The producer span is a child of the writing request; the consumer's continues from it.
    in_trace = [s for s in spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]
    [producer] = [s for s in in_trace if s.kind == SpanKind.PRODUCER]
    [processing] = [s for s in in_trace if s.kind == SpanKind.CONSUMER]
    assert producer.name == f"{subject} publish"
    assert producer.parent is not None
    assert producer.parent.span_id == request_span.get_span_context().span_id
    assert format(producer.context.span_id, "016x") == producer_span_id
    assert processing.parent is not None
    assert processing.parent.span_id == producer.context.span_id

    async with owner.connection() as conn, conn.transaction():
        row = await (await conn.execute("SELECT published_at FROM outbox")).fetchone()
    assert row is not None
    assert row["published_at"] is not None
    assert h.counter("trellis_consumer_messages_total", consumer=name, outcome="processed") == 1


async def test_rolled_back_transaction_publishes_nothing(
    pool: db.Pool, owner: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant = new_id()

    class Abort(Exception):
        pass

    async def write_then_fail() -> None:
        async with db.tenant_tx(pool, tenant) as conn:
            await write_event(
                conn,
                events_pb2.ContactDeleted(id=new_id(), version=2),
                tenant_id=tenant,
                record_id=new_id(),
                record_version=2,
            )
            raise Abort

    with pytest.raises(Abort):
        await write_then_fail()
    # A committed event after it: once that one is out, the relay has had its chance.
    [committed] = await write(pool, tenant)
    async with h.running(OutboxRelay(pool, js, source=SOURCE)):
        await h.eventually(
            lambda: h.scalar(owner, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"),
            within=10,
            what="the committed event to be published",
        )
    stored = await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>")
    assert [m.headers["ce-id"] for m in stored] == [committed]
    assert await h.scalar(owner, "SELECT count(*) FROM outbox") == 1


async def test_nats_outage_and_republishes_still_give_exactly_once_effects(
    pool: db.Pool, owner: db.Pool, js: JetStreamContext, nats_server: Nats, h: Any
) -> None:
    tenant = new_id()
    name = f"c{uuid.uuid4().hex[:12]}"
    filters = [f"crm.events.{tenant}.>"]
    seen = "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM seen WHERE consumer = %s"

    async def effects() -> tuple[int, int]:
        async with pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(seen, (name,))).fetchone()
        assert row is not None
        return row["n"], row["d"]

    relay = OutboxRelay(pool, js, source=SOURCE, poll_interval=0.5, publish_timeout=1)
    consumer = Consumer(
        js, pool, name=name, filter_subjects=filters, handler=recorder(name), info_interval=1
    )
    async with h.running(relay, consumer):
        await write(pool, tenant)  # warm-up: all bound and flowing before the outage

        async def applied(n: int) -> bool:
            return await effects() == (n, n)

        await h.eventually(lambda: applied(1), within=10, what="the warm-up event")

        nats_server.stop()
        try:
            ids = await write(pool, tenant, 200)
            # No PubAck, no mark: the relay's failing rounds leave every row unpublished.
            await h.eventually(
                lambda: h.counter("trellis_outbox_backlog_events") == 200,
                within=10,
                what="the relay to fail a round and report a backlog of 200",
            )
            unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            assert await h.scalar(owner, unpublished) == 200
        finally:
            nats_server.start()  # later tests need it, whatever happened here
        assert len(set(ids)) == 200

        await h.eventually(lambda: applied(201), within=30, what="201 effects after the outage")

        # Re-publish everything with two relays racing over the same rows: the stream drops
        # the copies by Nats-Msg-Id, so it still holds each event once.
        async with owner.connection() as conn, conn.transaction():
            await conn.execute("UPDATE outbox SET published_at = NULL")
        async with h.running(OutboxRelay(pool, js, source=SOURCE, batch_size=25)):
            await h.eventually(
                lambda: h.scalar(
                    owner, "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"
                ),
                within=15,
                what="the re-publish",
            )
        stored = await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>")
        assert len(stored) == 201
        assert len({m.headers["ce-id"] for m in stored}) == 201

        # A copy the stream does not recognise (as after the dedupe window) reaches the
        # consumer, and the inbox turns it into a no-op.
        copy = stored[-1]
        headers = dict(copy.headers)
        headers["Nats-Msg-Id"] = new_id()
        await js.publish(copy.subject, copy.data, headers=headers)
        await h.eventually(
            lambda: h.counter(
                "trellis_consumer_messages_total", consumer=name, outcome="duplicate"
            ),
            within=10,
            what="the duplicate to be skipped",
        )
        assert await effects() == (201, 201)
    assert h.counter("trellis_consumer_messages_total", consumer=name, outcome="processed") == 201
    assert h.counter("trellis_outbox_backlog_events") == 0


async def test_relay_survives_its_listen_connection_dying(
    pool: db.Pool, owner: db.Pool, js: JetStreamContext, postgres: Postgres, h: Any
) -> None:
    tenant = new_id()
    # Polling every 60 s: anything faster than that was woken by NOTIFY.
    relay = OutboxRelay(pool, js, source=SOURCE, poll_interval=60)
    dbname = pool.name
    listeners = (
        "SELECT pid FROM pg_stat_activity WHERE datname = %s"
        " AND application_name = 'trellis-outbox-listener'"
    )

    async def listener_pids() -> list[int]:
        async with await psycopg.AsyncConnection.connect(postgres.superuser_url) as conn:
            rows = await (await conn.execute(listeners, (dbname,))).fetchall()
        return [r[0] for r in rows]

    async def published() -> int:
        return int(
            await h.scalar(owner, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        )

    async with h.running(relay):
        [old_pid] = await h.eventually(listener_pids, within=5, what="the listener to connect")
        await write(pool, tenant)
        await h.eventually(published, within=3, what="a NOTIFY-driven publish")

        async with await psycopg.AsyncConnection.connect(postgres.superuser_url) as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))

        async def new_listener() -> list[int]:
            return [p for p in await listener_pids() if p != old_pid]

        await h.eventually(new_listener, within=10, what="the listener to reconnect")
        await write(pool, tenant)

        async def both_published() -> bool:
            return await published() == 2

        await h.eventually(both_published, within=3, what="a publish after the reconnect")


async def test_stop_finishes_and_returns_promptly(
    pool: db.Pool, owner: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant = new_id()
    await write(pool, tenant, 50)
    relay = OutboxRelay(pool, js, source=SOURCE, batch_size=10, poll_interval=30)
    async with h.running(relay):
        await h.eventually(
            lambda: h.scalar(
                owner, "SELECT count(*) = 50 FROM outbox WHERE published_at IS NOT NULL"
            ),
            within=10,
            what="all 50 to be published in batches of 10",
        )
    # Stopped while idle in a 30 s poll wait: `running` bounds stop() at 15 s, and a second
    # stop() is harmless.
    await relay.stop()
    stored = await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>")
    assert len(stored) == 50
    # Sent in seq order, so the stream holds them in the order they were written.
    async with owner.connection() as conn, conn.transaction():
        rows = await (await conn.execute("SELECT id FROM outbox ORDER BY seq")).fetchall()
    assert [m.headers["ce-id"] for m in stored] == [str(r["id"]) for r in rows]


async def test_ensure_streams_is_idempotent_under_a_race_and_repairs_drift(
    js: JetStreamContext,
) -> None:
    await asyncio.gather(*(bus.ensure_streams(js, replicas=1) for _ in range(4)))
    # Someone changed the DLQ by hand; the next start puts our configuration back.
    info = await js.stream_info(bus.DLQ_STREAM)
    info.config.duplicate_window = 30.0
    await js.update_stream(info.config)
    await asyncio.gather(bus.ensure_streams(js, replicas=1), bus.ensure_streams(js, replicas=1))
    for name, subjects in ((bus.STREAM, ["crm.events.>"]), (bus.DLQ_STREAM, ["crm.dlq.>"])):
        config = (await js.stream_info(name)).config
        assert config.subjects == subjects
        assert config.storage == StorageType.FILE
        assert config.num_replicas == 1
        assert config.duplicate_window == 120.0


def test_subjects_and_types() -> None:
    assert bus.event_subject("t1", "sales", "deal", "won") == "crm.events.t1.sales.deal.won"
    for bad in ("a.b", "*", ">", "", "a b"):
        with pytest.raises(ValueError, match="NATS subject token"):
            bus.event_subject(bad, "sales", "deal", "won")


async def _write_versions(pool: db.Pool, tenant: str, records: list[str], versions: int) -> None:
    """Updates of the same records interleaved across concurrent writers, versions in order
    per record (as the row lock of an update orders them in a service)."""

    async def one_record(record: str) -> None:
        for version in range(1, versions + 1):
            async with db.tenant_tx(pool, tenant) as conn:
                await write_event(
                    conn,
                    events_pb2.ContactUpdated(
                        contact=contacts_pb2.Contact(id=record, version=version)
                    ),
                    tenant_id=tenant,
                    record_id=record,
                    record_version=version,
                )
            await asyncio.sleep(0)

    await asyncio.gather(*(one_record(r) for r in records))


def _versions_in_stream_order(stored: list[Any]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for m in stored:
        seen.setdefault(m.headers["ce-subject"], []).append(int(m.headers["ce-recordversion"]))
    return seen


class _GatedRelay(OutboxRelay):
    """A relay that holds its first claimed batch until the test opens the gate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claimed = asyncio.Event()
        self.gate = asyncio.Event()

    async def _publish(self, rows: Any) -> Any:
        self.claimed.set()
        await self.gate.wait()
        return await super()._publish(rows)


async def test_a_second_relay_waits_for_the_batch_in_flight_instead_of_overtaking_it(
    pool: db.Pool, owner: db.Pool, js: JetStreamContext, postgres: Postgres, h: Any
) -> None:
    tenant, record = new_id(), new_id()
    await _write_versions(pool, tenant, [record], versions=10)
    first = _GatedRelay(pool, js, source=SOURCE, batch_size=5)
    second = OutboxRelay(pool, js, source=SOURCE, batch_size=5)
    waiting_for_lock = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        " AND wait_event_type = 'Lock' AND query LIKE '%%crm_outbox_claim%%'"
    )

    async def second_blocked_or_ahead() -> bool:
        async with await psycopg.AsyncConnection.connect(postgres.superuser_url) as conn:
            row = await (await conn.execute(waiting_for_lock, (pool.name,))).fetchone()
        blocked = row is not None and row[0] > 0
        ahead = bool(await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>"))
        return blocked or ahead

    async with h.running(first):
        await asyncio.wait_for(first.claimed.wait(), 10)  # versions 1-5 claimed, not sent
        async with h.running(second):
            await h.eventually(
                second_blocked_or_ahead, within=10, what="the second relay to try its batch"
            )
            first.gate.set()
            await h.eventually(
                lambda: h.scalar(
                    owner, "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"
                ),
                within=15,
                what="all ten events to be published",
            )
    stored = await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>")
    assert _versions_in_stream_order(stored) == {record: list(range(1, 11))}


class _Crash(BaseException):
    """Ends a relay mid-batch the way a killed process would: nothing after it runs."""


class _DyingRelay(OutboxRelay):
    """A relay that dies after sending half of its first batch (its PubAcks included)."""

    async def _publish(self, rows: Any) -> Any:
        await super()._publish(rows[: len(rows) // 2])
        raise _Crash


async def test_a_relay_killed_mid_batch_leaves_the_batch_to_the_next_in_order(
    pool: db.Pool, owner: db.Pool, js: JetStreamContext, h: Any
) -> None:
    tenant = new_id()
    records = [new_id() for _ in range(3)]
    await _write_versions(pool, tenant, records, versions=10)
    dying = _DyingRelay(pool, js, source=SOURCE, batch_size=30)
    with pytest.raises(_Crash):
        await dying.run()
    # Half the batch reached the stream; the batch's transaction died with the relay.
    assert len(await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>")) == 15
    assert await h.scalar(owner, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 30
    async with h.running(OutboxRelay(pool, js, source=SOURCE, batch_size=30)):
        await h.eventually(
            lambda: h.scalar(owner, "SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"),
            within=15,
            what="the next relay to publish the batch",
        )
    stored = await h.stream_messages(js, bus.STREAM, f"crm.events.{tenant}.>")
    # The re-published half was dropped by the stream (same Nats-Msg-Id): each event once,
    # each record's in order.
    assert len({m.headers["ce-id"] for m in stored}) == len(stored) == 30
    assert _versions_in_stream_order(stored) == {r: list(range(1, 11)) for r in records}


async def test_the_app_role_sees_one_tenants_events_and_the_relay_all(
    pool: db.Pool, owner: db.Pool
) -> None:
    mine, theirs = new_id(), new_id()
    await write(pool, mine)
    await write(pool, theirs, 2)
    for tenant, expected in ((mine, 1), (theirs, 2)):
        async with db.tenant_tx(pool, tenant) as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM outbox")
            assert (await cur.fetchone()) == {"n": expected}
    async with pool.connection() as conn, conn.transaction():  # no tenant: nothing at all
        assert (await (await conn.execute("SELECT count(*) AS n FROM outbox")).fetchone()) == {
            "n": 0
        }
        # Writing another tenant's event from inside a tenant's transaction is refused.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        async with db.tenant_tx(pool, mine) as conn:
            await write_event(
                conn,
                created(first_name="x"),
                tenant_id=theirs,
                record_id=new_id(),
                record_version=1,
            )
