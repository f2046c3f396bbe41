"""The gRPC face of the notify service: requests -> domain -> store -> replies.

The chassis interceptor has already verified the caller, the RPC's scope and the proto's
limits, and turns domain errors into statuses; each handler is its use case only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from nats.js import JetStreamContext

from crm.notify.v1 import notify_pb2, notify_pb2_grpc
from crmkit import db, paging
from crmkit.context import caller
from crmkit.errors import invalid_field
from crmkit.ids import canonical_uuid
from trellis_notify import audience, domain, mapping, replay, signing, store
from trellis_notify.config import NotifySettings
from trellis_notify.dispatcher import Clock

Ctx = grpc.aio.ServicerContext[Any, Any]


def _mask(update_mask: Sequence[str], record: Message) -> list[str]:
    # An empty mask means "every field set in the message" (proto3: every non-default field).
    paths = list(update_mask) or [f.name for f, _ in record.ListFields()]
    return domain.resolve_mask(paths)


def _after_id(token: str, filters: dict[str, object]) -> str | None:
    after = paging.decode_page_token(token, filters, arity=1)
    if after is None:
        return None
    after_id = canonical_uuid(str(after[0]))
    if after_id is None:
        raise invalid_field("page_token", "malformed page token")
    return after_id


class NotifyApi(notify_pb2_grpc.NotifyServiceServicer):
    def __init__(
        self, pool: db.Pool, js: JetStreamContext, settings: NotifySettings, clock: Clock
    ) -> None:
        self._pool = pool
        self._js = js
        self._settings = settings
        self._clock = clock

    # --- endpoints ------------------------------------------------------------------------------

    async def CreateWebhook(
        self, request: notify_pb2.CreateWebhookRequest, context: Ctx
    ) -> notify_pb2.Webhook:
        fields = domain.normalize_webhook(
            mapping.webhook_draft(request.webhook),
            domain.WRITABLE,
            self._settings.webhook_allow_private,
        )
        made = await store.create_webhook(
            self._pool, caller().tenant_id, fields, signing.new_secret()
        )
        return mapping.webhook_to_proto(made, with_secret=True)

    async def GetWebhook(
        self, request: notify_pb2.GetWebhookRequest, context: Ctx
    ) -> notify_pb2.Webhook:
        return mapping.webhook_to_proto(
            await store.get_webhook(self._pool, caller().tenant_id, request.id)
        )

    async def ListWebhooks(
        self, request: notify_pb2.ListWebhooksRequest, context: Ctx
    ) -> notify_pb2.ListWebhooksResponse:
        size = paging.page_size(request.page_size)
        filters: dict[str, object] = {}
        after = _after_id(request.page_token, filters)
        rows = await store.list_webhooks(self._pool, caller().tenant_id, after, size + 1)
        page, token = paging.next_page(
            [mapping.webhook_to_proto(w) for w in rows], size, lambda w: [w.id], filters
        )
        return notify_pb2.ListWebhooksResponse(webhooks=page, next_page_token=token)

    async def UpdateWebhook(
        self, request: notify_pb2.UpdateWebhookRequest, context: Ctx
    ) -> notify_pb2.Webhook:
        paths = _mask(request.update_mask, request.webhook)
        draft = domain.normalize_webhook(
            mapping.webhook_draft(request.webhook), paths, self._settings.webhook_allow_private
        )
        updated = await store.update_webhook(
            self._pool, caller().tenant_id, request.id, draft, paths, request.etag
        )
        return mapping.webhook_to_proto(updated)

    async def DeleteWebhook(
        self, request: notify_pb2.DeleteWebhookRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await store.delete_webhook(self._pool, caller().tenant_id, request.id, request.etag)
        return empty_pb2.Empty()

    async def RotateWebhookSecret(
        self, request: notify_pb2.RotateWebhookSecretRequest, context: Ctx
    ) -> notify_pb2.Webhook:
        overlap = timedelta(hours=self._settings.webhook_secret_overlap_hours)
        rotated = await store.rotate_secret(
            self._pool,
            caller().tenant_id,
            request.id,
            signing.new_secret(),
            overlap,
            self._clock(),
        )
        return mapping.webhook_to_proto(rotated, with_secret=True)

    async def TestWebhook(
        self, request: notify_pb2.TestWebhookRequest, context: Ctx
    ) -> notify_pb2.WebhookDelivery:
        queued = await store.enqueue_ping(self._pool, caller().tenant_id, request.id, self._clock())
        return mapping.delivery_to_proto(queued)

    async def ReplayWebhook(
        self, request: notify_pb2.ReplayWebhookRequest, context: Ctx
    ) -> notify_pb2.ReplayWebhookResponse:
        tenant_id = caller().tenant_id
        if not request.HasField("start_time"):
            raise invalid_field("start_time", "required: events after this time are sent again")
        try:
            start = request.start_time.ToDatetime(UTC)
        except ValueError:
            raise invalid_field("start_time", "not a valid time") from None
        webhook = await store.get_webhook(self._pool, tenant_id, request.id)
        found = await replay.matching_events(
            self._js,
            tenant_id,
            start,
            webhook.fields.event_types,
            self._settings.replay_max_events,
        )
        queued = await store.enqueue_replay(
            self._pool, tenant_id, webhook.id, found.events, self._clock()
        )
        answer = notify_pb2.ReplayWebhookResponse(queued_count=queued, truncated=found.truncated)
        if found.last_time is not None:
            answer.last_event_time.FromDatetime(found.last_time)
        return answer

    # --- the delivery log -----------------------------------------------------------------------

    async def ListWebhookDeliveries(
        self, request: notify_pb2.ListWebhookDeliveriesRequest, context: Ctx
    ) -> notify_pb2.ListWebhookDeliveriesResponse:
        size = paging.page_size(request.page_size)
        status = mapping.status_from_proto(request.status, "status")
        filters: dict[str, object] = {"webhook_id": request.webhook_id, "status": status}
        after = _after_id(request.page_token, filters)
        rows = await store.list_deliveries(
            self._pool, caller().tenant_id, request.webhook_id, status, after, size + 1
        )
        page, token = paging.next_page(
            [mapping.delivery_to_proto(d) for d in rows], size, lambda d: [d.id], filters
        )
        return notify_pb2.ListWebhookDeliveriesResponse(deliveries=page, next_page_token=token)

    async def GetWebhookDelivery(
        self, request: notify_pb2.GetWebhookDeliveryRequest, context: Ctx
    ) -> notify_pb2.WebhookDelivery:
        found = await store.get_delivery(
            self._pool, caller().tenant_id, request.webhook_id, request.id
        )
        return mapping.delivery_to_proto(found)

    async def RetryWebhookDelivery(
        self, request: notify_pb2.RetryWebhookDeliveryRequest, context: Ctx
    ) -> notify_pb2.WebhookDelivery:
        again = await store.retry_delivery(
            self._pool, caller().tenant_id, request.webhook_id, request.id, self._clock()
        )
        return mapping.delivery_to_proto(again)

    # --- suppressions ---------------------------------------------------------------------------

    async def ListSuppressions(
        self, request: notify_pb2.ListSuppressionsRequest, context: Ctx
    ) -> notify_pb2.ListSuppressionsResponse:
        size = paging.page_size(request.page_size)
        filters: dict[str, object] = {}
        after = paging.decode_page_token(request.page_token, filters, arity=2)
        rows = await audience.list_suppressions(
            self._pool,
            caller().tenant_id,
            (str(after[0]), str(after[1])) if after is not None else None,
            size + 1,
        )
        page, token = paging.next_page(
            [mapping.suppression_to_proto(r) for r in rows],
            size,
            lambda s: [s.email, s.purpose],
            filters,
        )
        return notify_pb2.ListSuppressionsResponse(suppressions=page, next_page_token=token)

    async def CreateSuppression(
        self, request: notify_pb2.CreateSuppressionRequest, context: Ctx
    ) -> notify_pb2.Suppression:
        msg = request.suppression
        email, purpose, detail = domain.suppression(
            msg.email, msg.purpose, msg.detail, "suppression"
        )
        added = await audience.add_suppression(
            self._pool, caller().tenant_id, email, purpose, detail
        )
        return mapping.suppression_to_proto(added)

    async def DeleteSuppression(
        self, request: notify_pb2.DeleteSuppressionRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await audience.remove_suppression(
            self._pool, caller().tenant_id, request.email, request.purpose.strip()
        )
        return empty_pb2.Empty()
