"""The webhook routes: bad input is INVALID_ARGUMENT naming the field, another tenant's ids
are NOT_FOUND everywhere, lists page, updates and deletes honour etags and scopes."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from google.protobuf import timestamp_pb2

from crm.notify.v1 import notify_pb2
from crmkit.errors import violations_of
from trellis_devstack.testing import eventually, failure

from .support import Receiver, Running, Tenant, create_webhook, deliveries, publish


async def _invalid(call: Awaitable[object]) -> list[str]:
    err = await failure(call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return [field for field, _ in violations_of(err)]


@pytest.mark.parametrize(
    ("webhook", "fields"),
    [
        ({"url": "", "event_types": ["*"]}, ["webhook.url"]),
        ({"url": "ftp://example.com/x", "event_types": ["*"]}, ["webhook.url"]),
        ({"url": "https://u:p@example.com/", "event_types": ["*"]}, ["webhook.url"]),
        ({"url": "https://example.com/", "event_types": []}, ["webhook.event_types"]),
        (
            {"url": "https://example.com/", "event_types": ["crm.Contacts.*", "a b", ""]},
            ["webhook.event_types[0]", "webhook.event_types[1]", "webhook.event_types[2]"],
        ),
        (
            {"url": "https://example.com/", "event_types": ["*"], "description": "a\nb"},
            ["webhook.description"],
        ),
        ({"url": "https://example.com/" + "x" * 2100, "event_types": ["*"]}, ["webhook.url"]),
        ({"url": "https://example.com/", "event_types": ["*"] * 21}, ["webhook.event_types"]),
    ],
)
async def test_bad_endpoints_are_refused_naming_the_fields(
    service: Running, tenant: Tenant, webhook: dict[str, object], fields: list[str]
) -> None:
    request = notify_pb2.CreateWebhookRequest(webhook=notify_pb2.Webhook(**webhook))  # type: ignore[arg-type]
    assert await _invalid(service.stub.CreateWebhook(request, metadata=tenant.md())) == fields
    listed = await service.stub.ListWebhooks(notify_pb2.ListWebhooksRequest(), metadata=tenant.md())
    assert list(listed.webhooks) == []


async def test_bad_list_and_action_requests(service: Running, tenant: Tenant) -> None:
    stub, md = service.stub, tenant.md()
    hook = await create_webhook(service, tenant, "https://example.com/hook")
    assert await _invalid(
        stub.ListWebhooks(notify_pb2.ListWebhooksRequest(page_size=501), metadata=md)
    ) == ["page_size"]
    assert await _invalid(
        stub.ListWebhooks(notify_pb2.ListWebhooksRequest(page_token="%%%"), metadata=md)
    ) == ["page_token"]
    assert await _invalid(
        stub.ListWebhookDeliveries(
            notify_pb2.ListWebhookDeliveriesRequest(
                webhook_id=hook.id, status=notify_pb2.DeliveryStatus.ValueType(42)
            ),
            metadata=md,
        )
    ) == ["status"]
    assert await _invalid(
        stub.ReplayWebhook(notify_pb2.ReplayWebhookRequest(id=hook.id), metadata=md)
    ) == ["start_time"]
    bad_time = timestamp_pb2.Timestamp(seconds=-(10**12))
    assert await _invalid(
        stub.ReplayWebhook(
            notify_pb2.ReplayWebhookRequest(id=hook.id, start_time=bad_time), metadata=md
        )
    ) == ["start_time"]
    assert await _invalid(
        stub.UpdateWebhook(
            notify_pb2.UpdateWebhookRequest(id=hook.id, update_mask=["nope"]), metadata=md
        )
    ) == ["update_mask"]
    assert await _invalid(
        stub.UpdateWebhook(
            notify_pb2.UpdateWebhookRequest(
                id=hook.id, webhook=notify_pb2.Webhook(url="ftp://x"), update_mask=["url"]
            ),
            metadata=md,
        )
    ) == ["webhook.url"]


async def test_another_tenants_ids_are_not_found_on_every_route(
    service: Running, tenant: Tenant, other_tenant: Tenant, receiver: Receiver
) -> None:
    hook = await create_webhook(service, tenant, receiver.url)
    await publish(service.js, tenant.id)
    [delivery] = await eventually(lambda: deliveries(service, tenant, hook.id), what="queued")
    stub, md = service.stub, other_tenant.md()
    start = timestamp_pb2.Timestamp(seconds=1)
    calls: list[Awaitable[object]] = [
        stub.GetWebhook(notify_pb2.GetWebhookRequest(id=hook.id), metadata=md),
        stub.UpdateWebhook(
            notify_pb2.UpdateWebhookRequest(
                id=hook.id, webhook=notify_pb2.Webhook(disabled=True), update_mask=["disabled"]
            ),
            metadata=md,
        ),
        stub.DeleteWebhook(notify_pb2.DeleteWebhookRequest(id=hook.id), metadata=md),
        stub.RotateWebhookSecret(notify_pb2.RotateWebhookSecretRequest(id=hook.id), metadata=md),
        stub.TestWebhook(notify_pb2.TestWebhookRequest(id=hook.id), metadata=md),
        stub.ReplayWebhook(
            notify_pb2.ReplayWebhookRequest(id=hook.id, start_time=start), metadata=md
        ),
        stub.ListWebhookDeliveries(
            notify_pb2.ListWebhookDeliveriesRequest(webhook_id=hook.id), metadata=md
        ),
        stub.GetWebhookDelivery(
            notify_pb2.GetWebhookDeliveryRequest(webhook_id=hook.id, id=delivery.id), metadata=md
        ),
        stub.RetryWebhookDelivery(
            notify_pb2.RetryWebhookDeliveryRequest(webhook_id=hook.id, id=delivery.id),
            metadata=md,
        ),
        stub.GetWebhook(notify_pb2.GetWebhookRequest(id="not-an-id"), metadata=md),
    ]
    for call in calls:
        err = await failure(call)
        assert err.code() is grpc.StatusCode.NOT_FOUND, err.details()
    listed = await stub.ListWebhooks(notify_pb2.ListWebhooksRequest(), metadata=md)
    assert list(listed.webhooks) == []
    # A delivery of the tenant's own webhook is not found under another of its webhooks.
    second = await create_webhook(service, tenant, receiver.url)
    err = await failure(
        service.stub.GetWebhookDelivery(
            notify_pb2.GetWebhookDeliveryRequest(webhook_id=second.id, id=delivery.id),
            metadata=tenant.md(),
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    # The owner's endpoint is untouched.
    got = await service.stub.GetWebhook(
        notify_pb2.GetWebhookRequest(id=hook.id), metadata=tenant.md()
    )
    assert got.version == hook.version


async def test_scopes_are_enforced(service: Running, tenant: Tenant) -> None:
    err = await failure(
        service.stub.CreateWebhook(
            notify_pb2.CreateWebhookRequest(
                webhook=notify_pb2.Webhook(url="https://example.com/", event_types=["*"])
            ),
            metadata=tenant.md("notify:read"),
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    err = await failure(
        service.stub.ListWebhooks(
            notify_pb2.ListWebhooksRequest(), metadata=tenant.md("contacts:read")
        )
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_lists_page_and_updates_honour_etags(service: Running, tenant: Tenant) -> None:
    made = [await create_webhook(service, tenant, f"https://example.com/{i}") for i in range(5)]
    seen, token = [], ""
    while True:
        page = await service.stub.ListWebhooks(
            notify_pb2.ListWebhooksRequest(page_size=2, page_token=token), metadata=tenant.md()
        )
        seen += [w.id for w in page.webhooks]
        assert all(w.secret == "" for w in page.webhooks)
        token = page.next_page_token
        if not token:
            break
    assert seen == [w.id for w in reversed(made)]

    hook = made[0]
    changed = await service.stub.UpdateWebhook(
        notify_pb2.UpdateWebhookRequest(
            id=hook.id, webhook=notify_pb2.Webhook(description="CRM sync"), etag=hook.etag
        ),
        metadata=tenant.md(),
    )
    assert (changed.description, changed.version, changed.url) == ("CRM sync", 2, hook.url)
    same = await service.stub.UpdateWebhook(
        notify_pb2.UpdateWebhookRequest(
            id=hook.id, webhook=notify_pb2.Webhook(description="CRM sync")
        ),
        metadata=tenant.md(),
    )
    assert same.version == 2  # nothing changed, nothing written
    stale = await failure(
        service.stub.DeleteWebhook(
            notify_pb2.DeleteWebhookRequest(id=hook.id, etag=hook.etag), metadata=tenant.md()
        )
    )
    assert stale.code() is grpc.StatusCode.FAILED_PRECONDITION
    await service.stub.DeleteWebhook(
        notify_pb2.DeleteWebhookRequest(id=hook.id, etag=changed.etag), metadata=tenant.md()
    )
    gone = await failure(
        service.stub.GetWebhook(notify_pb2.GetWebhookRequest(id=hook.id), metadata=tenant.md())
    )
    assert gone.code() is grpc.StatusCode.NOT_FOUND


async def test_a_create_repeated_with_its_idempotency_key_makes_one_endpoint(
    service: Running, tenant: Tenant
) -> None:
    request = notify_pb2.CreateWebhookRequest(
        webhook=notify_pb2.Webhook(url="https://example.com/once", event_types=["*"])
    )
    md = (*tenant.md(), ("idempotency-key", "hook-1"))
    first = await service.stub.CreateWebhook(request, metadata=md)
    # The answer held the secret, which is shown once: the repeat is refused, not answered
    # with it again (the chassis keeps no copy), and makes no second endpoint.
    again = await failure(service.stub.CreateWebhook(request, metadata=md))
    assert again.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "shown only once" in (again.details() or "")
    listed = await service.stub.ListWebhooks(notify_pb2.ListWebhooksRequest(), metadata=tenant.md())
    assert [w.id for w in listed.webhooks] == [first.id]
