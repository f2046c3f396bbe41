"""A partner's view of the events: one durable JetStream consumer over the tenant's subjects,
kept reading through every fault, recording each delivery as it came."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from crmkit import bus

CONSUMER = "fault-suite"
# A delivery whose ack was lost with NATS comes again after this long, not after the default
# 30 s: the run waits for the consumer to have nothing pending.
ACK_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Delivery:
    stream_seq: int
    ce_id: str
    event: str  # <domain>.<entity>.<action>, the subject's last tokens
    record_id: str  # ce-subject
    version: str  # ce-recordversion
    digest: str  # of the data: two publications of one event carry the same bytes


EventKey = tuple[str, str, str]  # (event, record id, record version)


def key_of(delivery: Delivery) -> EventKey:
    return (delivery.event, delivery.record_id, delivery.version)


def _delivery(msg: Msg) -> Delivery:
    headers = msg.headers or {}
    return Delivery(
        stream_seq=msg.metadata.sequence.stream,
        ce_id=headers.get("ce-id", ""),
        event=".".join(msg.subject.split(".")[3:]),
        record_id=headers.get("ce-subject", ""),
        version=headers.get("ce-recordversion", ""),
        digest=hashlib.sha256(msg.data).hexdigest(),
    )


class EventReader:
    def __init__(self, url: str, tenant_id: str) -> None:
        self._url = url
        self._subject = f"crm.events.{tenant_id}.>"
        self.deliveries: list[Delivery] = []
        self._seen: dict[EventKey, float] = {}  # when each event was first read
        self._nc: NATS | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._nc = await bus.connect(self._url, name="fault-suite-reader")
        self._task = asyncio.create_task(self._read(), name="fault-suite-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None:
            await self._nc.close()

    async def _read(self) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_SECONDS,
            max_ack_pending=-1,
        )
        while True:
            try:
                sub = await js.pull_subscribe(
                    self._subject, durable=CONSUMER, stream=bus.STREAM, config=config
                )
                try:
                    while True:
                        try:
                            messages = await sub.fetch(500, timeout=1)
                        except TimeoutError:
                            continue  # nothing new
                        for msg in messages:
                            self._record(_delivery(msg))
                            await msg.ack()
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception:  # NATS is down (a fault): bind again once it is back
                await asyncio.sleep(0.2)

    def _record(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._seen.setdefault(key_of(delivery), time.monotonic())

    def seen_at(self, key: EventKey) -> float | None:
        return self._seen.get(key)

    async def wait_for(self, keys: Iterable[EventKey], within: float) -> float:
        """Until every event named has been read; returns when the last of them was."""
        wanted = set(keys)
        deadline = time.monotonic() + within
        while not wanted <= self._seen.keys():
            if time.monotonic() > deadline:
                raise AssertionError(f"events never read: {sorted(wanted - self._seen.keys())}")
            await asyncio.sleep(0.02)
        return max(self._seen[k] for k in wanted)

    async def caught_up(self, within: float) -> None:
        """Until the consumer has nothing left to deliver and nothing awaiting an ack: every
        message the stream holds for the tenant has been read at least once."""
        assert self._nc is not None
        js = self._nc.jetstream()
        deadline = time.monotonic() + within
        while True:
            info = await js.consumer_info(bus.STREAM, CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the event reader did not catch up: {info}")
            await asyncio.sleep(0.05)
