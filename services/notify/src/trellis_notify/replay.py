"""Reading a tenant's past events back from the CRM_EVENTS stream, for ReplayWebhook.

An ephemeral pull consumer starts at the given time (the stream's own timestamps: when each
event was published) on the tenant's subjects only; it reads up to what the stream held when
the replay began, so events published meanwhile, which reach the endpoint anyway, are not
sent twice. It acknowledges nothing and is deleted when done (or by the server once idle).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from crmkit import bus
from crmkit.consumer import Event, MalformedEventError, parse_event
from trellis_notify import domain

log = logging.getLogger(__name__)

_BATCH = 256
_FETCH_TIMEOUT = 2.0
_EARLY = timedelta(microseconds=1)


@dataclass(frozen=True)
class Found:
    events: list[Event]
    truncated: bool
    last_time: datetime | None  # (just before) the stream time of the last event taken


async def matching_events(
    js: JetStreamContext,
    tenant_id: str,
    start: datetime,
    event_types: Collection[str],
    limit: int,
) -> Found:
    """The tenant's events published at or after `start` whose type matches, oldest first."""
    info = await js.stream_info(bus.STREAM)
    last_seq = info.state.last_seq
    events: list[Event] = []
    last_time: datetime | None = None
    if info.state.messages == 0:
        return Found(events, False, None)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        mem_storage=True,
        filter_subject=f"crm.events.{bus.subject_token(tenant_id, 'tenant id')}.>",
    )
    sub = await js.pull_subscribe(config.filter_subject or "", stream=bus.STREAM, config=config)
    try:
        while True:
            try:
                msgs = await sub.fetch(_BATCH, timeout=_FETCH_TIMEOUT)
            except TimeoutError:  # nothing left at or before last_seq
                return Found(events, False, last_time)
            for msg in msgs:
                meta = msg.metadata
                if meta.sequence.stream > last_seq:
                    return Found(events, False, last_time)
                try:
                    event = parse_event(msg)
                except MalformedEventError as err:
                    log.warning("skipping a malformed event in a replay", extra={"error": str(err)})
                    continue
                if not domain.matches(event_types, event.type):
                    continue
                if len(events) == limit:
                    return Found(events, True, last_time)
                events.append(event)
                # A microsecond early: the stream keeps nanoseconds and the client's datetime
                # may round up, so a replay resumed from here takes this event again (its
                # webhook-id lets the partner drop it) rather than miss the next one.
                last_time = meta.timestamp - _EARLY
                if meta.num_pending == 0:
                    return Found(events, False, last_time)
            if msgs and msgs[-1].metadata.num_pending == 0:
                return Found(events, False, last_time)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if config.name:  # pull_subscribe named the ephemeral consumer
            with contextlib.suppress(Exception):
                await js.delete_consumer(bus.STREAM, config.name)
