"""Replay from a time re-sends exactly the tenant's matching events after it; a test ping goes
to one endpoint."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from crm.notify.v1 import notify_pb2
from trellis_devstack.testing import eventually
from trellis_notify import replay

from .support import Receiver, Running, Tenant, create_webhook, deliveries, publish


async def test_replay_resends_exactly_the_events_after_the_time(
    service: Running, tenant: Tenant, other_tenant: Tenant, receiver: Receiver
) -> None:
    hook = await create_webhook(service, tenant, receiver.url, ["crm.contacts.*"])
    before = [await publish(service.js, tenant.id) for _ in range(3)]
    await eventually(lambda: len(receiver.accepted()) == 3, what="the first events")
    cut = datetime.now(UTC)
    after = [await publish(service.js, tenant.id) for _ in range(2)]
    await publish(service.js, tenant.id, domain="sales", entity="deal")  # not subscribed
    await publish(service.js, other_tenant.id)  # another tenant's
    await eventually(lambda: len(receiver.accepted()) == 5, what="the later events")

    start = timestamp_pb2.Timestamp()
    start.FromDatetime(cut)
    replayed = await service.stub.ReplayWebhook(
        notify_pb2.ReplayWebhookRequest(id=hook.id, start_time=start), metadata=tenant.md()
    )
    assert replayed.queued_count == 2
    assert not replayed.truncated
    await eventually(lambda: len(receiver.accepted()) == 7, what="the replayed events")
    again = [r.headers["webhook-id"] for r in receiver.accepted()[5:]]
    assert sorted(again) == sorted(after)
    assert not set(again) & set(before)
    log = await deliveries(service, tenant, hook.id)
    assert sorted(d.event_id for d in log if d.replay) == sorted(after)


async def test_replay_is_bounded_and_says_where_it_stopped(
    service: Running, tenant: Tenant
) -> None:
    start = datetime.now(UTC)
    sent = [await publish(service.js, tenant.id) for _ in range(3)]
    first = await replay.matching_events(service.js, tenant.id, start, ["*"], limit=2)
    assert [e.id for e in first.events] == sent[:2]
    assert first.truncated
    assert first.last_time is not None
    rest = await replay.matching_events(service.js, tenant.id, first.last_time, ["*"], limit=2)
    # From the last event taken: it comes again (a partner dedupes it by webhook-id), then the rest.
    assert [e.id for e in rest.events] == sent[1:]
    assert not rest.truncated


async def test_a_ping_goes_to_the_one_endpoint(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    hook = await create_webhook(service, tenant, receiver.url, ["crm.sales.deal.won.v1"])
    queued = await service.stub.TestWebhook(
        notify_pb2.TestWebhookRequest(id=hook.id), metadata=tenant.md()
    )
    assert queued.event_type == "crm.notify.webhook.ping.v1"
    assert queued.status == notify_pb2.DELIVERY_STATUS_PENDING
    await eventually(lambda: receiver.accepted(), what="the ping")
    body = receiver.accepted()[0].event
    assert body["type"] == "crm.notify.webhook.ping.v1"
    assert body["data"] == {"webhook_id": hook.id}
    assert body["id"] == queued.event_id
