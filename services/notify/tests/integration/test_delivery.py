"""Events reach a partner's endpoint signed (Standard Webhooks), as CloudEvents, verified by
the `standardwebhooks` package in a real HTTP receiver; secrets rotate with an overlap."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from crm.notify.v1 import notify_pb2
from trellis_devstack.testing import eventually

from .support import Receiver, Running, Tenant, create_webhook, deliveries, publish


async def test_an_event_arrives_signed_as_a_structured_cloudevent(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    hook = await create_webhook(service, tenant, receiver.url, ["crm.contacts.contact.*"])
    assert hook.secret.startswith("whsec_")
    record = "0190aaaa-0000-7000-8000-000000000001"
    event_id = await publish(service.js, tenant.id, record_id=record, version=3)

    await eventually(lambda: receiver.accepted(), what="the webhook")
    got = receiver.accepted()[0]
    body = Webhook(hook.secret).verify(got.body, got.headers)
    assert got.headers["webhook-id"] == event_id
    assert got.headers["Content-Type"] == "application/cloudevents+json"
    assert body["specversion"] == "1.0"
    assert body["id"] == event_id
    assert body["type"] == "crm.contacts.contact.updated.v1"
    assert body["source"] == "/trellis/contacts"
    assert body["subject"] == record
    assert body["tenantid"] == tenant.id
    assert body["recordversion"] == 3
    assert body["datacontenttype"] == "application/json"
    assert body["dataschema"] == "urn:trellis:schema:crm.contacts.v1.Test"
    assert body["data"] == {"id": record, "version": "3"}
    assert body["time"].endswith("Z")

    # The delivery log shows it delivered, with its one attempt.
    [logged] = await eventually(lambda: deliveries(service, tenant, hook.id), what="the log")
    await eventually(
        lambda: _status(service, tenant, hook.id, logged.id, notify_pb2.DELIVERY_STATUS_DELIVERED),
        what="delivered in the log",
    )
    full = await service.stub.GetWebhookDelivery(
        notify_pb2.GetWebhookDeliveryRequest(webhook_id=hook.id, id=logged.id),
        metadata=tenant.md(),
    )
    assert full.event_id == event_id
    assert full.subject == record
    assert [(a.number, a.status_code, a.response_snippet) for a in full.attempts] == [
        (1, 200, "ok")
    ]
    assert full.HasField("deliver_time")


async def _status(
    service: Running, tenant: Tenant, webhook_id: str, delivery_id: str, status: int
) -> bool:
    got = await service.stub.GetWebhookDelivery(
        notify_pb2.GetWebhookDeliveryRequest(webhook_id=webhook_id, id=delivery_id),
        metadata=tenant.md(),
    )
    return got.status == status


async def test_a_tampered_body_or_an_old_timestamp_fails_verification(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    hook = await create_webhook(service, tenant, receiver.url)
    await publish(service.js, tenant.id)
    await eventually(lambda: receiver.accepted(), what="the webhook")
    got = receiver.accepted()[0]
    verifier = Webhook(hook.secret)

    tampered = json.loads(got.body)
    tampered["data"]["version"] = "99"
    with pytest.raises(WebhookVerificationError):
        verifier.verify(json.dumps(tampered, separators=(",", ":")), got.headers)

    # A message captured and sent again ten minutes later is refused, even re-timestamped:
    # the signature covers the timestamp.
    old = datetime.now(UTC) - timedelta(minutes=10)
    replayed = {**got.headers, "webhook-timestamp": str(int(old.timestamp()))}
    with pytest.raises(WebhookVerificationError):
        verifier.verify(got.body, replayed)
    resigned = {
        **replayed,
        "webhook-signature": verifier.sign(got.headers["webhook-id"], old, got.body.decode()),
    }
    with pytest.raises(WebhookVerificationError, match="too old"):
        verifier.verify(got.body, resigned)

    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43).verify(got.body, got.headers)  # another secret


async def test_during_a_rotation_both_secrets_verify_then_only_the_new_one(
    service: Running, tenant: Tenant, receiver: Receiver
) -> None:
    hook = await create_webhook(service, tenant, receiver.url)
    rotated = await service.stub.RotateWebhookSecret(
        notify_pb2.RotateWebhookSecretRequest(id=hook.id), metadata=tenant.md()
    )
    assert rotated.secret.startswith("whsec_")
    assert rotated.secret != hook.secret
    overlap_ends = rotated.previous_secret_expire_time.ToDatetime(UTC)
    assert overlap_ends > datetime.now(UTC) + timedelta(hours=23)
    # Reading the endpoint shows neither secret.
    read = await service.stub.GetWebhook(
        notify_pb2.GetWebhookRequest(id=hook.id), metadata=tenant.md()
    )
    assert read.secret == ""

    await publish(service.js, tenant.id)
    await eventually(lambda: len(receiver.accepted()) == 1, what="the first webhook")
    first = receiver.accepted()[0]
    Webhook(hook.secret).verify(first.body, first.headers)  # a partner not yet switched
    Webhook(rotated.secret).verify(first.body, first.headers)  # one already switched

    # After the overlap, only the new secret signs.
    service.clock.set(overlap_ends + timedelta(seconds=1))
    await publish(service.js, tenant.id)
    await eventually(lambda: len(receiver.accepted()) == 2, what="the second webhook")
    second = receiver.accepted()[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    assert second.headers["webhook-timestamp"] == str(
        int((overlap_ends + timedelta(seconds=1)).timestamp())
    )


async def test_only_matching_event_types_of_the_tenant_are_sent(
    service: Running, tenant: Tenant, other_tenant: Tenant, receiver: Receiver
) -> None:
    await create_webhook(service, tenant, receiver.url, ["crm.sales.deal.*", "*.created.v1"])
    await publish(service.js, tenant.id, action="updated")  # no
    await publish(service.js, other_tenant.id, domain="sales", entity="deal", action="won")  # no
    won = await publish(service.js, tenant.id, domain="sales", entity="deal", action="won")
    created = await publish(service.js, tenant.id, action="created")
    marker = await publish(service.js, tenant.id, domain="sales", entity="deal", action="lost")
    await eventually(
        lambda: marker in [r.headers["webhook-id"] for r in receiver.accepted()],
        what="the last event",
    )
    # Different records: no order between them, and nothing else.
    got = [r.headers["webhook-id"] for r in receiver.accepted()]
    assert sorted(got) == sorted([won, created, marker])
