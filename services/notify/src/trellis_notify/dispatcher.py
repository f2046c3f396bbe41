"""The webhook dispatcher: takes due deliveries from the per-endpoint queues and sends them.

A claim takes, per endpoint, only the first unfinished delivery of each record and at most
`per_webhook` deliveries, and skips endpoints this dispatcher already sends that many to: a
slow or dead endpoint ties up at most `per_webhook` of the `concurrency` slots, never the
others' turn. A send's outcome is recorded with its claim, so a dispatcher that lost its
claim (it outlived its lease) records nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from crmkit import db
from crmkit.clock import Clock, system_clock
from trellis_notify import signing, store
from trellis_notify.domain import RetryPolicy
from trellis_notify.metrics import WEBHOOK_DELIVERIES, WEBHOOK_LATENCY
from trellis_notify.queue import QueueWorker
from trellis_notify.sender import Sender


class Dispatcher(QueueWorker[store.Claim]):
    def __init__(
        self,
        pool: db.Pool,
        sender: Sender,
        policy: RetryPolicy,
        *,
        clock: Clock = system_clock,
        concurrency: int = 64,
        per_webhook: int = 8,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(minutes=2),
    ) -> None:
        super().__init__(
            pool, "webhook_deliveries", concurrency=concurrency, poll_interval=poll_interval
        )
        self._sender = sender
        self._policy = policy
        self._clock = clock
        self._per_webhook = per_webhook
        self._lease = lease
        self._per_endpoint: Counter[str] = Counter()

    async def claim(self, free: int) -> Sequence[store.Claim]:
        busy = [w for w, n in self._per_endpoint.items() if n >= self._per_webhook]
        return await store.claim(
            self._pool, self._clock(), self._lease, free, self._per_webhook, busy
        )

    def started(self, item: store.Claim) -> None:
        self._per_endpoint[item.webhook_id] += 1

    def finished(self, item: store.Claim) -> None:
        self._per_endpoint[item.webhook_id] -= 1
        if self._per_endpoint[item.webhook_id] <= 0:
            del self._per_endpoint[item.webhook_id]

    async def work(self, item: store.Claim) -> None:
        held = await store.claimed(self._pool, item)
        if held is None:
            return
        webhook = held.webhook
        at = self._clock()
        headers = signing.headers(held.event_id, at, held.body, webhook.signing_secrets(at))
        answer = await self._sender.post(webhook.fields.url, held.body, headers, self._clock)
        verdict = self._policy.judge(answer, held.attempts + 1 - held.schedule_start, self._clock())
        if await store.record_attempt(self._pool, held, at, answer, verdict):
            WEBHOOK_DELIVERIES.labels(verdict.outcome.value).inc()
            if answer.status:
                WEBHOOK_LATENCY.observe(answer.latency_ms / 1000)

    async def closed(self) -> None:
        await self._sender.close()
