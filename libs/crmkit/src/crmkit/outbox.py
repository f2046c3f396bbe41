"""Transactional outbox (DESIGN.md §4): events are rows written with the change they describe,
and a relay publishes them to JetStream after commit.

The relay wakes on LISTEN/NOTIFY and polls as a fallback, claims the oldest unpublished rows
with `FOR UPDATE` (without SKIP LOCKED: a relay in another replica waits for the batch in
flight and then takes the rows after it, so the stream receives rows in their commit order
and one record's events in order), publishes and waits for every PubAck before marking the
batch sent. A failure, or a relay killed mid-batch, rolls the whole batch back; whatever did
reach the stream is dropped on the re-publish by `Nats-Msg-Id`, and consumers' inboxes cover
a re-publish that comes after the stream's dedupe window. The relay reads every tenant's rows
through the SECURITY DEFINER functions of the chassis migrations; the service's own role sees
one tenant's at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, Status, StatusCode
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from crmkit import bus, contract, db, listen, metrics, telemetry
from crmkit.ids import new_id

log = logging.getLogger(__name__)
_tracer = telemetry.tracer(__name__)

_INSERT = """
INSERT INTO outbox (id, tenant_id, subject, ce_type, ce_subject, data, trace_context,
                    record_version, data_schema)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
_CLAIM = "SELECT * FROM crm_outbox_claim(%s) ORDER BY seq"
_MARK = "SELECT latency FROM crm_outbox_mark(%s)"
# Capped so the gauge stays cheap even when a long outage has piled rows up.
_BACKLOG_CAP = 100_000
_BACKLOG = "SELECT crm_outbox_backlog(%s) AS n"


def event_json(message: Message) -> bytes:
    """An event's data: proto3 JSON with every field printed, so a cleared field reads as
    cleared (an empty string, an empty list) instead of simply missing."""
    return MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=None,
        ensure_ascii=False,
    ).encode()


async def write_event(
    conn: psycopg.AsyncConnection[Any],
    message: Message,
    *,
    tenant_id: str,
    record_id: str,
    record_version: int,
) -> str:
    """Add an event to the outbox inside the caller's transaction; returns the event id.

    Its type and subject come from the message's (crm.common.v1.event) option, so they cannot
    drift from the contract. Nothing is sent until that transaction commits, so an event
    exists if and only if the change it describes does. The writing request's trace context
    is kept with the row, so the consumers' spans join that trace.
    """
    kind = contract.event_type(message.DESCRIPTOR)
    event_id = new_id()
    await conn.execute(
        _INSERT,
        (
            event_id,
            tenant_id,
            bus.event_subject(tenant_id, kind.domain, kind.entity, kind.action),
            kind.ce_type,
            record_id,
            event_json(message),
            Jsonb(telemetry.current_traceparent()),
            record_version,
            kind.schema,
        ),
    )
    return event_id


class OutboxRelay:
    """Publishes committed outbox rows to JetStream; one per service process."""

    def __init__(
        self,
        pool: db.Pool,
        js: JetStreamContext,
        *,
        source: str,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._js = js
        self._source = source
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._publish_timeout = publish_timeout
        self._metrics = metrics.outbox()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False

    async def run(self) -> None:
        """Relay until `stop()`; errors are logged and retried, never raised."""
        if self._running:
            raise RuntimeError("OutboxRelay.run() is already running")
        self._running = True
        self._finished.clear()
        # The relay's own queries run every second or so; traced, each would be a root trace
        # of its own. The producer spans are unaffected: they start from the stored context.
        with suppress_instrumentation():
            listener = asyncio.create_task(
                listen.wake_on_notify(self._pool, "outbox", self._wake, self._stopping),
                name="outbox-listen",
            )
            try:
                await self._loop()
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
                self._running = False
                self._finished.set()

    async def stop(self) -> None:
        """Finish the batch in flight (if any), then return."""
        self._stopping.set()
        self._wake.set()
        if self._running:
            await self._finished.wait()

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()  # before the round: a NOTIFY during it triggers another
            try:
                claimed = await self._round()
            except Exception as err:
                failures += 1
                delay = bus.retry_delay(failures)
                log.warning(
                    "outbox relay round failed; batch rolled back",
                    exc_info=failures == 1,  # the traceback once, not every few seconds
                    extra={"error": repr(err), "retry_in_seconds": round(delay, 2)},
                )
                await self._refresh_backlog()
                await self._sleep(delay)
                continue
            failures = 0
            await self._refresh_backlog()
            if claimed < self._batch_size:  # a full batch means more may be waiting
                await self._wait_for_wake(self._poll_interval)

    async def _round(self) -> int:
        latencies: list[float] = []
        async with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_CLAIM, (self._batch_size,))
            rows = await cur.fetchall()
            if not rows:
                return 0
            await self._publish(rows)
            await cur.execute(_MARK, ([r["seq"] for r in rows],))
            latencies = [r["latency"] for r in await cur.fetchall()]
        # Committed: only now do the rows count as published.
        self._metrics.published.inc(len(latencies))
        for latency in latencies:
            self._metrics.publish_latency.observe(max(latency, 0.0))
        return len(rows)

    async def _publish(self, rows: Sequence[DictRow]) -> list[PubAck]:
        """Send in seq order on one connection (so the stream keeps it), then await all acks."""
        spans: list[trace.Span] = []
        pending: list[asyncio.Future[PubAck]] = []
        try:
            for row in rows:
                event_id = str(row["id"])
                span = _tracer.start_span(
                    f"{row['subject']} publish",
                    context=telemetry.context_from(row["trace_context"]),
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": "nats",
                        "messaging.operation.type": "send",
                        "messaging.destination.name": row["subject"],
                        "messaging.message.id": event_id,
                        "cloudevents.event_type": row["ce_type"],
                    },
                )
                spans.append(span)
                headers = bus.ce_headers(
                    event_id=event_id,
                    ce_type=row["ce_type"],
                    source=self._source,
                    subject=row["ce_subject"],
                    tenant_id=str(row["tenant_id"]),
                    time=row["created_at"],
                    record_version=row["record_version"],
                    dataschema=row["data_schema"],
                )
                with trace.use_span(span, end_on_exit=False):
                    telemetry.inject_into(headers)  # consumers continue from this span
                pending.append(
                    await self._js.publish_async(
                        row["subject"], bytes(row["data"]), headers=headers
                    )
                )
            return await asyncio.wait_for(asyncio.gather(*pending), self._publish_timeout)
        except BaseException as err:
            for fut in pending:
                fut.cancel()  # frees the client's in-flight slot; late acks are ignored
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, repr(err)))
            raise
        finally:
            for span in spans:
                span.end()

    async def _refresh_backlog(self) -> None:
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(_BACKLOG, (_BACKLOG_CAP,))
                row = await cur.fetchone()
            self._metrics.backlog.set(row["n"] if row else 0)
        except Exception as err:  # a metric is not worth failing the round for
            log.debug("outbox backlog not refreshed", extra={"error": repr(err)})

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short by `stop()` (but not by NOTIFY: a failing relay should back off)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait_for_wake(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
