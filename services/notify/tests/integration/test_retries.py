"""Endpoints that fail: retries on the schedule, outages ridden out without loss, duplicates or
reordering per record, 410 disabling, dead letters and their re-drive, slow endpoints that
cannot hold up the others."""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from datetime import timedelta

from aiohttp import web

from crm.notify.v1 import notify_pb2
from crmkit.ids import new_id
from trellis_devstack.testing import eventually, failure

from .support import Receiver, Running, Tenant, answer, create_webhook, deliveries, publish


def _versions_by_record(receiver: Receiver) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for got in receiver.accepted():
        seen[got.event["subject"]].append(got.event["recordversion"])
    return seen


async def test_errors_then_refused_connections_then_up_every_event_once_in_order(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = answer(500)
    hook = await create_webhook(service, tenant, receiver.url)
    a, b = new_id(), new_id()
    sent = []
    for version in (1, 2, 3):
        sent.append(await publish(service.js, tenant.id, record_id=a, version=version))
    for version in (1, 2):
        sent.append(await publish(service.js, tenant.id, record_id=b, version=version))

    # 500s first: the first event of each record is tried, the later ones wait behind it.
    await eventually(lambda: len(receiver.received) >= 3, what="failed attempts")
    assert {r.event["recordversion"] for r in receiver.received} == {1}
    # Then the endpoint goes away: connections are refused.
    await receiver.stop()
    refused = await eventually(
        lambda: _refused_attempt(service, tenant, hook.id), what="an attempt refused"
    )
    assert refused.status_code == 0
    # Then it is back, answering 200.
    receiver.script = None
    await receiver.start()
    await eventually(lambda: len(receiver.accepted()) == 5, within=30, what="every event")

    ids = [r.headers["webhook-id"] for r in receiver.accepted()]
    assert sorted(ids) == sorted(sent)  # every event, none twice
    assert _versions_by_record(receiver) == {a: [1, 2, 3], b: [1, 2]}
    log = await deliveries(service, tenant, hook.id)
    assert {d.status for d in log} == {notify_pb2.DELIVERY_STATUS_DELIVERED}
    first_of_a = next(d for d in log if d.event_id == sent[0])
    assert first_of_a.attempt_count >= 3  # 500, 500..., refused, then 200


async def _refused_attempt(
    service: Running, tenant: Tenant, webhook_id: str
) -> notify_pb2.WebhookAttempt | None:
    for delivery in await deliveries(service, tenant, webhook_id):
        full = await service.stub.GetWebhookDelivery(
            notify_pb2.GetWebhookDeliveryRequest(webhook_id=webhook_id, id=delivery.id),
            metadata=tenant.md(),
        )
        for attempt in full.attempts:
            if attempt.status_code == 0 and attempt.error:
                return attempt
    return None


async def test_backoff_follows_the_schedule_on_a_fixed_clock_then_dead_letters(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = answer(503)
    start = service.clock.freeze()
    hook = await create_webhook(service, tenant, receiver.url)
    await publish(service.js, tenant.id)
    [delivery] = await eventually(lambda: deliveries(service, tenant, hook.id), what="queued")

    schedule = [0.5, 1, 2]  # support.SCHEDULE, each +-10%
    for attempt, delay in enumerate(schedule, start=1):
        current = await eventually(
            functools.partial(_after_attempts, service, tenant, hook.id, delivery.id, attempt),
            what=f"attempt {attempt}",
        )
        tried_at = current.attempts[-1].time.ToDatetime()
        due = current.next_attempt_time.ToDatetime()
        assert tried_at == start.replace(tzinfo=None)  # the clock stands still
        assert timedelta(seconds=delay * 0.9) <= due - tried_at <= timedelta(seconds=delay * 1.1)
        assert current.status == notify_pb2.DELIVERY_STATUS_PENDING
        # Nothing happens until the clock reaches the due time.
        assert len(receiver.received) == attempt
        start = due.replace(tzinfo=start.tzinfo)
        service.clock.set(start)

    final = await eventually(
        lambda: _after_attempts(service, tenant, hook.id, delivery.id, len(schedule) + 1),
        what="the last attempt",
    )
    assert final.status == notify_pb2.DELIVERY_STATUS_DEAD_LETTERED
    assert not final.HasField("next_attempt_time")
    assert [a.status_code for a in final.attempts] == [503] * 4
    assert final.attempts[0].response_snippet == "answer 503"

    # A dead letter is visible in the log, and re-driven with a fresh schedule.
    dead = await service.stub.ListWebhookDeliveries(
        notify_pb2.ListWebhookDeliveriesRequest(
            webhook_id=hook.id, status=notify_pb2.DELIVERY_STATUS_DEAD_LETTERED
        ),
        metadata=tenant.md(),
    )
    assert [d.id for d in dead.deliveries] == [delivery.id]
    receiver.script = None
    again = await service.stub.RetryWebhookDelivery(
        notify_pb2.RetryWebhookDeliveryRequest(webhook_id=hook.id, id=delivery.id),
        metadata=tenant.md(),
    )
    assert again.status == notify_pb2.DELIVERY_STATUS_PENDING
    done = await eventually(
        lambda: _after_attempts(service, tenant, hook.id, delivery.id, 5), what="the re-drive"
    )
    assert done.status == notify_pb2.DELIVERY_STATUS_DELIVERED
    assert len(receiver.accepted()) == 1
    # A delivered one cannot be retried.
    err = await failure(
        service.stub.RetryWebhookDelivery(
            notify_pb2.RetryWebhookDeliveryRequest(webhook_id=hook.id, id=delivery.id),
            metadata=tenant.md(),
        )
    )
    assert err.code().name == "FAILED_PRECONDITION"


async def _after_attempts(
    service: Running, tenant: Tenant, webhook_id: str, delivery_id: str, n: int
) -> notify_pb2.WebhookDelivery | None:
    got = await service.stub.GetWebhookDelivery(
        notify_pb2.GetWebhookDeliveryRequest(webhook_id=webhook_id, id=delivery_id),
        metadata=tenant.md(),
    )
    return got if len(got.attempts) >= n else None


async def test_retry_after_is_honoured(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = answer(429, **{"Retry-After": "120"})
    start = service.clock.freeze()
    hook = await create_webhook(service, tenant, receiver.url)
    await publish(service.js, tenant.id)
    [delivery] = await eventually(lambda: deliveries(service, tenant, hook.id), what="queued")
    first = await eventually(
        lambda: _after_attempts(service, tenant, hook.id, delivery.id, 1), what="an attempt"
    )
    due = first.next_attempt_time.ToDatetime()
    assert due - start.replace(tzinfo=None) == timedelta(seconds=120)


async def test_410_disables_the_endpoint_and_other_4xx_are_not_retried(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = answer(400)
    hook = await create_webhook(service, tenant, receiver.url)
    await publish(service.js, tenant.id)
    await eventually(lambda: receiver.received, what="an attempt")
    [bad] = await eventually(
        lambda: _with_status(service, tenant, hook.id, notify_pb2.DELIVERY_STATUS_FAILED),
        what="failed",
    )
    assert bad.attempt_count == 1

    receiver.script = answer(410)
    await publish(service.js, tenant.id)
    await eventually(
        lambda: _disabled(service, tenant, hook.id), what="the endpoint to be disabled"
    )
    got = await service.stub.GetWebhook(
        notify_pb2.GetWebhookRequest(id=hook.id), metadata=tenant.md()
    )
    assert got.disabled
    assert got.disabled_reason == "the endpoint answered 410 Gone"
    assert got.version == hook.version + 1

    # Disabled: new events are not queued for it. Enabled again: they are.
    receiver.script = None
    await publish(service.js, tenant.id)
    enabled = await service.stub.UpdateWebhook(
        notify_pb2.UpdateWebhookRequest(
            id=hook.id, webhook=notify_pb2.Webhook(disabled=False), update_mask=["disabled"]
        ),
        metadata=tenant.md(),
    )
    assert not enabled.disabled
    assert enabled.disabled_reason == ""
    after = await publish(service.js, tenant.id)
    await eventually(lambda: receiver.accepted(), what="an event after enabling")
    assert [r.headers["webhook-id"] for r in receiver.accepted()] == [after]
    assert len(await deliveries(service, tenant, hook.id)) == 3


async def _with_status(
    service: Running, tenant: Tenant, webhook_id: str, status: int
) -> list[notify_pb2.WebhookDelivery]:
    return [d for d in await deliveries(service, tenant, webhook_id) if d.status == status]


async def _disabled(service: Running, tenant: Tenant, webhook_id: str) -> bool:
    got = await service.stub.GetWebhook(
        notify_pb2.GetWebhookRequest(id=webhook_id), metadata=tenant.md()
    )
    return got.disabled


async def test_a_slow_endpoint_does_not_delay_a_fast_one(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    release = asyncio.Event()

    async def stuck(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    slow = Receiver()
    slow.script = stuck
    await slow.start()
    try:
        await create_webhook(service, tenant, slow.url, ["crm.contacts.*"])
        await create_webhook(service, tenant, receiver.url, ["crm.sales.*"])
        for _ in range(6):  # more than the slow endpoint's slots (2 in these tests)
            await publish(service.js, tenant.id)
        fast = [
            await publish(service.js, tenant.id, domain="sales", entity="deal") for _ in range(6)
        ]
        await eventually(lambda: len(receiver.accepted()) == 6, what="the fast endpoint's events")
        assert sorted(r.headers["webhook-id"] for r in receiver.accepted()) == sorted(fast)
        # Meanwhile the slow endpoint holds its two slots and got nothing through.
        assert len(slow.received) == 0
    finally:
        release.set()
        await eventually(lambda: len(slow.accepted()) == 6, within=30, what="the slow ones")
        await slow.stop()
