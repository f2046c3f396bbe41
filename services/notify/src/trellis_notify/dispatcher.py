"""The webhook dispatcher: takes due deliveries from the per-endpoint queues and sends them.

Each replica runs one. It wakes when deliveries are queued (LISTEN/NOTIFY) or a send ends,
and polls as a fallback (retries fall due with time). A claim takes, per endpoint, only the
first unfinished delivery of each record and at most `per_webhook` deliveries, and skips
endpoints this dispatcher already sends that many to: a slow or dead endpoint ties up at most
`per_webhook` of the `concurrency` slots, never the others' turn. A send's outcome is recorded
with its claim, so a dispatcher that lost its claim (it outlived its lease) records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from crmkit import bus, db, listen
from trellis_notify import signing, store
from trellis_notify.domain import RetryPolicy
from trellis_notify.metrics import WEBHOOK_DELIVERIES, WEBHOOK_LATENCY
from trellis_notify.sender import Sender

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    def __init__(
        self,
        pool: db.Pool,
        sender: Sender,
        policy: RetryPolicy,
        *,
        clock: Clock = utc_now,
        concurrency: int = 64,
        per_webhook: int = 8,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(minutes=2),
    ) -> None:
        self._pool = pool
        self._sender = sender
        self._policy = policy
        self._clock = clock
        self._concurrency = concurrency
        self._per_webhook = per_webhook
        self._poll_interval = poll_interval
        self._lease = lease
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._per_endpoint: Counter[str] = Counter()

    def wake(self) -> None:
        """Look for due deliveries now (tests move a fixed clock, then call this)."""
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.create_task(
            listen.wake_on_notify(self._pool, "webhook_deliveries", self._wake, self._stopping),
            name="webhook-deliveries-listen",
        )
        try:
            await self._loop()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            # Sends in flight finish (each is bounded by the timeout) and record their outcome.
            await asyncio.gather(*self._sending, return_exceptions=True)
            await self._sender.close()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()  # before the round: a wake during it triggers another
            try:
                full = await self._round()
            except Exception as err:
                failures += 1
                delay = bus.retry_delay(failures)
                log.warning(
                    "webhook claim failed",
                    exc_info=failures == 1,
                    extra={"error": repr(err), "retry_in_seconds": round(delay, 2)},
                )
                await self._wait(delay)
                continue
            failures = 0
            if not full:
                await self._wait(self._poll_interval)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _round(self) -> bool:
        """Claim and start what is due; True when the batch was full (more may be due)."""
        free = self._concurrency - len(self._sending)
        if free <= 0:
            return False
        busy = [w for w, n in self._per_endpoint.items() if n >= self._per_webhook]
        claims = await store.claim(
            self._pool, self._clock(), self._lease, free, self._per_webhook, busy
        )
        for claim in claims:
            self._per_endpoint[claim.webhook_id] += 1
            task = asyncio.create_task(self._deliver(claim), name=f"webhook-{claim.id}")
            self._sending.add(task)
            task.add_done_callback(functools.partial(self._sent, webhook_id=claim.webhook_id))
        return len(claims) == free

    def _sent(self, task: asyncio.Task[None], *, webhook_id: str) -> None:
        self._sending.discard(task)
        self._per_endpoint[webhook_id] -= 1
        if self._per_endpoint[webhook_id] <= 0:
            del self._per_endpoint[webhook_id]
        self._wake.set()  # a slot is free, and the record's next delivery may be due

    async def _deliver(self, claim: store.Claim) -> None:
        try:
            held = await store.claimed(self._pool, claim)
            if held is None:
                return
            webhook = held.webhook
            at = self._clock()
            headers = signing.headers(held.event_id, at, held.body, webhook.signing_secrets(at))
            answer = await self._sender.post(webhook.fields.url, held.body, headers, self._clock)
            done = self._clock()
            verdict = self._policy.judge(answer, held.attempts + 1 - held.schedule_start, done)
            if await store.record_attempt(self._pool, held, at, answer, verdict):
                WEBHOOK_DELIVERIES.labels(verdict.outcome.value).inc()
                if answer.status:
                    WEBHOOK_LATENCY.observe(answer.latency_ms / 1000)
        except Exception:
            # The claim lapses with its lease and the delivery is sent again then.
            log.exception("webhook delivery failed", extra={"delivery_id": claim.id})
