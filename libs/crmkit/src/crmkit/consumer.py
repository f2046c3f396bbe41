"""Durable JetStream consumers with an inbox, a dead-letter stream and re-drive (DESIGN.md §4).

Delivery is at least once; the effect is exactly once: the handler runs in the same
transaction that records `(consumer, event id)` in the inbox, so a redelivery finds the row
and does nothing. A handler that keeps failing is retried with backoff, then parked in
CRM_DLQ with its error, where it can be inspected and re-driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind, Status, StatusCode

from crmkit import bus, db, metrics, telemetry
from crmkit.ids import canonical_uuid

log = logging.getLogger(__name__)
_tracer = telemetry.tracer(__name__)

_INBOX = (
    "INSERT INTO inbox (tenant_id, consumer, event_id) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
)
_ERROR_HEADER_MAX = 1000
# The pull for the rest of a batch asks for messages the stream said were pending, so they
# come at once; if another replica took them meanwhile, this bounds the wait.
_MORE_TIMEOUT = 0.5

Outcome = Literal["processed", "duplicate", "retried", "dead_lettered"]


@dataclass(frozen=True)
class Event:
    """A CloudEvent as a handler sees it."""

    id: str
    type: str
    source: str
    subject: str  # the record's id
    tenant_id: str  # canonical; the subject's tenant, which ce-tenantid must agree with
    record_version: int  # ce-recordversion; 0 when the producer sent none
    time: str  # RFC 3339, as sent
    data: dict[str, Any]  # the event's proto3 JSON
    nats_subject: str
    headers: dict[str, str]


Handler = Callable[[Event, db.Conn], Awaitable[None]]


class MalformedEventError(ValueError):
    """Not a CloudEvent we can handle: retrying would not help, so it is dead-lettered."""


def parse_event(msg: Msg) -> Event:
    """The event of a message, its tenant taken from the subject (which NATS permissions and
    the stream's filters are based on) and checked against the ce-tenantid header."""
    headers = dict(msg.headers or {})
    missing = [h for h in ("ce-id", "ce-type", "ce-source", "ce-tenantid") if not headers.get(h)]
    if missing:
        raise MalformedEventError(f"missing CloudEvents headers: {', '.join(missing)}")
    try:
        tenant_id = canonical_uuid(bus.tenant_of_subject(msg.subject))
    except ValueError as err:
        raise MalformedEventError(str(err)) from None
    if tenant_id is None or tenant_id != canonical_uuid(headers["ce-tenantid"]):
        raise MalformedEventError(
            f"ce-tenantid {headers['ce-tenantid']!r} disagrees with subject {msg.subject!r}"
        )
    version = headers.get("ce-recordversion", "0")
    if not version.isdigit():
        raise MalformedEventError(f"ce-recordversion {version!r} is not a version number")
    try:
        data = json.loads(msg.data) if msg.data else {}
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedEventError(f"data is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise MalformedEventError("data is not a JSON object")
    return Event(
        id=headers["ce-id"],
        type=headers["ce-type"],
        source=headers["ce-source"],
        subject=headers.get("ce-subject", ""),
        tenant_id=tenant_id,
        record_version=int(version),
        time=headers.get("ce-time", ""),
        data=data,
        nats_subject=msg.subject,
        headers=headers,
    )


def dlq_subject(consumer: str, original_subject: str) -> str:
    return f"crm.dlq.{consumer}.{original_subject}"


def _header_value(text: str) -> str:
    # NATS headers are single lines; keep the error readable but bounded.
    flat = " ".join(text.split())
    return flat if len(flat) <= _ERROR_HEADER_MAX else flat[: _ERROR_HEADER_MAX - 3] + "..."


class Consumer:
    """One durable pull consumer; run several (replicas) with the same name to share work."""

    def __init__(
        self,
        js: JetStreamContext,
        pool: db.Pool,
        *,
        name: str,
        filter_subjects: list[str],
        handler: Handler,
        max_deliver: int = 5,
        backoff: Sequence[float] = (1, 5, 30, 120),
        batch: int = 50,
        stream: str = bus.STREAM,
        ack_wait: float = 30.0,
        handler_timeout: float = 120.0,
        fetch_timeout: float = 5.0,
        info_interval: float = 10.0,
    ) -> None:
        if not filter_subjects:
            raise ValueError("a consumer needs at least one filter subject")
        if max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")
        self.name = bus.subject_token(name, "consumer name")
        self._js = js
        self._pool = pool
        self._filters = list(filter_subjects)
        self._handler = handler
        self._max_deliver = max_deliver
        self._backoff = list(backoff)
        self._batch = batch
        self._stream = stream
        self._ack_wait = ack_wait
        self._handler_timeout = handler_timeout
        self._fetch_timeout = fetch_timeout
        self._info_interval = info_interval
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._metrics = metrics.consumer()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until `stop()`. Errors are logged and the consumer re-bound; never raised."""
        if self._running:
            raise RuntimeError(f"consumer {self.name} is already running")
        self._running = True
        self._finished.clear()
        failures = 0
        try:
            while not self._stopping.is_set():
                sub: JetStreamContext.PullSubscription | None = None
                try:
                    sub = await self._bind()
                    if failures:
                        log.info("consumer re-bound", extra={"consumer": self.name})
                    failures = 0
                    await self._pump(sub)
                except Exception as err:
                    failures += 1
                    delay = bus.retry_delay(failures)
                    log.warning(
                        "consumer loop failed; re-binding",
                        exc_info=failures == 1,  # the traceback once per outage
                        extra={
                            "consumer": self.name,
                            "error": repr(err),
                            "retry_in_seconds": round(delay, 2),
                        },
                    )
                    await self._sleep(delay)
                finally:
                    if sub is not None:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
        finally:
            self._running = False
            self._finished.set()

    async def stop(self) -> None:
        """Finish the message in hand, hand the rest of the batch back, and return."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()

    async def _bind(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            # One more than ours: we dead-letter on delivery `max_deliver`; the spare delivery
            # covers a process that died on that last attempt (the server would otherwise
            # drop the message silently). Retry delays are ours too (nak with delay): the
            # server's `backoff` would also replace ack_wait, cutting slow handlers short.
            max_deliver=self._max_deliver + 1,
            max_ack_pending=max(1000, self._batch * 4),
        )
        if len(self._filters) == 1:
            config.filter_subject = self._filters[0]
        else:
            config.filter_subjects = self._filters
        # Create-or-update: identical configs are a no-op, so replicas may race here.
        await self._js.add_consumer(self._stream, config)
        return await self._js.pull_subscribe_bind(self.name, stream=self._stream)

    async def _pump(self, sub: JetStreamContext.PullSubscription) -> None:
        next_check = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_check:
                # A deleted consumer or stream answers pulls with nothing at all (409s are
                # swallowed as timeouts), so ask now and then; NotFoundError leads to re-bind.
                info = await sub.consumer_info()
                self._metrics.pending.labels(self.name).set(info.num_pending or 0)
                next_check = time.monotonic() + self._info_interval
            msgs = await self._fetch(sub)
            for i, msg in enumerate(msgs):
                if self._stopping.is_set():
                    for rest in msgs[i:]:
                        await rest.nak()  # back to the stream now, for another replica
                    return
                await self._handle(msg)

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """One pull; an empty list on timeout (normal when idle) or when stopping.

        A message is handled as soon as it arrives: nats-py's fetch(n) returns only once n
        messages came or its wait is over (the server keeps such a pull open), which would hold
        a lone event for up to `fetch_timeout`. So the waiting pull asks for one; when the
        stream says more are pending, a second pull asks for exactly those (up to the batch),
        which are there to be taken at once, so no pull is left open to deliver later.
        """
        first = await self._pull(sub, 1, self._fetch_timeout)
        pending = first[-1].metadata.num_pending if first else 0
        more = min(self._batch - 1, pending or 0)
        if more <= 0:
            return first
        return first + await self._pull(sub, more, _MORE_TIMEOUT)

    async def _pull(
        self, sub: JetStreamContext.PullSubscription, count: int, wait_seconds: float
    ) -> list[Msg]:
        fetch = asyncio.ensure_future(sub.fetch(count, timeout=wait_seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if fetch not in done:
            # Stopping: drop the pull. Anything it was about to deliver is redelivered to a
            # replica after ack_wait.
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
            return []
        try:
            return fetch.result()
        except TimeoutError:  # nats.errors.TimeoutError and FetchTimeoutError included
            return []

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one message -----------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        with _tracer.start_as_current_span(
            f"{msg.subject} process",
            context=telemetry.context_from(headers),  # joins the producer's trace
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.name,
                "messaging.message.id": headers.get("ce-id", ""),
                "messaging.message.delivery_count": msg.metadata.num_delivered,
            },
        ) as span:
            try:
                event = parse_event(msg)
            except MalformedEventError as err:
                span.set_status(Status(StatusCode.ERROR, str(err)))
                log.warning(
                    "malformed event; dead-lettering",
                    extra={"consumer": self.name, "nats_subject": msg.subject, "error": str(err)},
                )
                await self._dead_letter(msg, err)
                self._metrics.messages.labels(self.name, "dead_lettered").inc()
                return
            try:
                outcome = await self._apply(msg, event)
            except Exception as err:
                span.record_exception(err)
                span.set_status(Status(StatusCode.ERROR, type(err).__name__))
                outcome = await self._failed(msg, event, err)
            else:
                await msg.ack()
            self._metrics.messages.labels(self.name, outcome).inc()

    async def _apply(self, msg: Msg, event: Event) -> Outcome:
        """Inbox row and handler effect in one transaction: both happen, or neither."""
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            async with asyncio.timeout(self._handler_timeout):
                async with db.tenant_tx(self._pool, event.tenant_id) as conn:
                    cur = await conn.execute(_INBOX, (event.tenant_id, self.name, event.id))
                    if cur.rowcount == 0:
                        return "duplicate"
                    await self._handler(event, conn)
            return "processed"
        finally:
            keepalive.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        # A handler may legitimately outlast ack_wait; tell the server it is still being worked
        # on so it is not redelivered to another replica meanwhile.
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(self._ack_wait / 3)
                await msg.in_progress()

    async def _failed(self, msg: Msg, event: Event, err: Exception) -> Outcome:
        deliveries = msg.metadata.num_delivered
        extra = {
            "consumer": self.name,
            "event_id": event.id,
            "event_type": event.type,
            "deliveries": deliveries,
            "error_type": type(err).__name__,
        }
        if deliveries >= self._max_deliver:
            log.error(
                "event handler failed for the last time; dead-lettering", exc_info=err, extra=extra
            )
            await self._dead_letter(msg, err)
            return "dead_lettered"
        delay = self._backoff[min(deliveries, len(self._backoff)) - 1] if self._backoff else None
        log.warning(
            "event handler failed; will retry",
            exc_info=err,
            extra={**extra, "retry_in_seconds": delay},
        )
        await msg.nak(delay=delay)
        return "retried"

    async def _dead_letter(self, msg: Msg, err: Exception) -> None:
        """Park the message in CRM_DLQ with why, then ack it here (only once the DLQ has it)."""
        md = msg.metadata
        headers = dict(msg.headers or {})
        event_id = headers.get("ce-id") or f"seq-{md.sequence.stream}"
        headers.update(
            {
                "dlq-error": _header_value(f"{type(err).__name__}: {err}"),
                "dlq-consumer": self.name,
                "dlq-original-subject": msg.subject,
                "dlq-deliveries": str(md.num_delivered),
                # The stream sequence makes a re-driven copy that fails again a new DLQ entry,
                # while a redelivery of this very message (ack lost) dedupes.
                "Nats-Msg-Id": f"{event_id}:{self.name}:{md.sequence.stream}",
            }
        )
        await self._js.publish(dlq_subject(self.name, msg.subject), msg.data, headers=headers)
        await msg.ack()
        self._metrics.dead_letters.labels(self.name).inc()


async def redrive(js: JetStreamContext, consumer_name: str, *, limit: int = 1000) -> int:
    """Move `consumer_name`'s dead letters back to their original subjects; returns how many.

    Every consumer of those subjects sees them again; the inbox makes those that already
    processed them skip them. Each copy gets a new Nats-Msg-Id (derived from its DLQ
    sequence, so re-running an interrupted re-drive does not publish twice).
    """
    filter_subject = dlq_subject(bus.subject_token(consumer_name, "consumer name"), ">")
    moved = 0
    seq = 1
    while moved < limit:
        try:
            raw = await js.get_msg(bus.DLQ_STREAM, seq=seq, subject=filter_subject, next=True)
        except NotFoundError:
            break
        if raw.seq is None:
            break
        seq = raw.seq + 1
        headers = raw.headers or {}
        original = headers.get("dlq-original-subject")
        if not original:
            log.warning("dead letter without its original subject", extra={"dlq_seq": raw.seq})
            continue
        out = {k: v for k, v in headers.items() if not k.lower().startswith(("dlq-", "nats-"))}
        out["Nats-Msg-Id"] = f"{headers.get('ce-id') or 'seq'}:redrive:{raw.seq}"
        await js.publish(original, raw.data or b"", headers=out)
        await js.delete_msg(bus.DLQ_STREAM, raw.seq)
        moved += 1
    if moved:
        log.info("dead letters re-driven", extra={"consumer": consumer_name, "count": moved})
    return moved
