"""The gRPC face of the notify service: requests -> domain -> store -> replies.

The chassis interceptor has already verified the caller, the RPC's scope and the proto's
limits, and turns domain errors into statuses; each handler is its use case only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from nats.js import JetStreamContext

from crm.notify.v1 import notify_pb2, notify_pb2_grpc
from crmkit import db, paging, updates
from crmkit.clock import Clock
from crmkit.context import caller
from crmkit.errors import Invalid, invalid_field
from crmkit.ids import known_id
from crmkit.protomap import time_from_proto
from trellis_notify import (
    audience,
    campaigns,
    domain,
    mail_store,
    mapping,
    replay,
    rule_store,
    rules,
    signing,
    store,
    templates,
)
from trellis_notify.config import NotifySettings
from trellis_notify.unsubscribe import Links

Ctx = grpc.aio.ServicerContext[Any, Any]


def _struct(value: struct_pb2.Struct) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(value)
    return found


class NotifyApi(notify_pb2_grpc.NotifyServiceServicer):
    def __init__(
        self,
        pool: db.Pool,
        js: JetStreamContext,
        settings: NotifySettings,
        clock: Clock,
        links: Links,
    ) -> None:
        self._pool = pool
        self._js = js
        self._settings = settings
        self._clock = clock
        self._links = links

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
        after = paging.after_id(request.page_token, filters)
        rows = await store.list_webhooks(self._pool, caller().tenant_id, after, size + 1)
        page, token = paging.next_page(
            [mapping.webhook_to_proto(w) for w in rows], size, lambda w: [w.id], filters
        )
        return notify_pb2.ListWebhooksResponse(webhooks=page, next_page_token=token)

    async def UpdateWebhook(
        self, request: notify_pb2.UpdateWebhookRequest, context: Ctx
    ) -> notify_pb2.Webhook:
        paths = updates.mask_paths(request.update_mask, request.webhook, domain.WRITABLE)
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
        start = time_from_proto(request, "start_time")
        if start is None:
            raise invalid_field("start_time", "required: events after this time are sent again")
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
        after = paging.after_id(request.page_token, filters)
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

    # --- templates ------------------------------------------------------------------------------

    async def CreateTemplate(
        self, request: notify_pb2.CreateTemplateRequest, context: Ctx
    ) -> notify_pb2.Template:
        draft = templates.normalize(mapping.template_draft(request.template), templates.WRITABLE)
        made = await mail_store.create_template(
            self._pool, caller().tenant_id, templates.finish(draft)
        )
        return mapping.template_to_proto(made)

    async def GetTemplate(
        self, request: notify_pb2.GetTemplateRequest, context: Ctx
    ) -> notify_pb2.Template:
        found = await mail_store.get_template(self._pool, caller().tenant_id, request.id)
        return mapping.template_to_proto(found)

    async def ListTemplates(
        self, request: notify_pb2.ListTemplatesRequest, context: Ctx
    ) -> notify_pb2.ListTemplatesResponse:
        size = paging.page_size(request.page_size)
        filters: dict[str, object] = {}
        after = paging.after_id(request.page_token, filters)
        rows = await mail_store.list_templates(self._pool, caller().tenant_id, after, size + 1)
        page, token = paging.next_page(
            [mapping.template_to_proto(t) for t in rows], size, lambda t: [t.id], filters
        )
        return notify_pb2.ListTemplatesResponse(templates=page, next_page_token=token)

    async def UpdateTemplate(
        self, request: notify_pb2.UpdateTemplateRequest, context: Ctx
    ) -> notify_pb2.Template:
        paths = updates.mask_paths(request.update_mask, request.template, templates.WRITABLE)
        draft = templates.normalize(mapping.template_draft(request.template), paths)
        updated = await mail_store.update_template(
            self._pool, caller().tenant_id, request.id, draft, paths, request.etag
        )
        return mapping.template_to_proto(updated)

    async def DeleteTemplate(
        self, request: notify_pb2.DeleteTemplateRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await mail_store.delete_template(self._pool, caller().tenant_id, request.id, request.etag)
        return empty_pb2.Empty()

    async def PreviewTemplate(
        self, request: notify_pb2.PreviewTemplateRequest, context: Ctx
    ) -> notify_pb2.RenderedEmail:
        found = await mail_store.get_template(self._pool, caller().tenant_id, request.id)
        given = _struct(request.variables)
        values = templates.Values(
            contact=_object(given, "contact"),
            event=_object(given, "event"),
            vars=_object(given, "vars"),
            unsubscribe_url=f"{self._settings.public_base_url()}/unsubscribe/preview",
        )
        try:
            rendered = templates.render(found.fields, request.locale, values.as_dict())
        except templates.RenderError as err:
            raise invalid_field("variables", str(err)) from None
        return notify_pb2.RenderedEmail(
            locale=rendered.locale, subject=rendered.subject, text=rendered.text, html=rendered.html
        )

    # --- emails ---------------------------------------------------------------------------------

    async def SendEmail(
        self, request: notify_pb2.SendEmailRequest, context: Ctx
    ) -> notify_pb2.Email:
        tenant_id = caller().tenant_id
        out: list[tuple[str, str]] = []
        contact_id = request.contact_id.strip()
        to = request.to.strip()
        if bool(contact_id) == bool(to):
            out.append(("contact_id", "give a contact_id or a to address, not both"))
        elif to:
            to = domain.email_address(to, "to", out)
        if out:
            raise Invalid(out)
        async with db.tenant_tx(self._pool, tenant_id) as conn:
            template = await mail_store.select_template(conn, tenant_id, request.template_id)
            contact: dict[str, Any] = {}
            if contact_id:
                known = known_id("contact", contact_id)
                found = await audience.recipient(conn, tenant_id, known)
                contact, to, contact_id = found.variables(), found.email, known
            queued = await mail_store.enqueue(
                conn,
                tenant_id,
                mail_store.Send(
                    template=template,
                    to=to,
                    contact_id=contact_id or None,
                    locale=request.locale,
                    values=templates.Values(contact=contact, vars=_struct(request.vars)),
                    origin="api",
                ),
                self._links,
                self._clock(),
            )
        assert queued is not None  # no origin key: never a duplicate
        return mapping.email_to_proto(queued)

    async def GetEmail(self, request: notify_pb2.GetEmailRequest, context: Ctx) -> notify_pb2.Email:
        found = await mail_store.get_email(self._pool, caller().tenant_id, request.id)
        return mapping.email_to_proto(found)

    async def ListEmails(
        self, request: notify_pb2.ListEmailsRequest, context: Ctx
    ) -> notify_pb2.ListEmailsResponse:
        size = paging.page_size(request.page_size)
        status = mapping.email_status_from_proto(request.status, "status")
        origin = request.origin.strip()
        filters: dict[str, object] = {"origin": origin, "status": status}
        after = paging.after_id(request.page_token, filters)
        rows = await mail_store.list_emails(
            self._pool, caller().tenant_id, origin, status, after, size + 1
        )
        page, token = paging.next_page(
            [mapping.email_to_proto(e) for e in rows], size, lambda e: [e.id], filters
        )
        return notify_pb2.ListEmailsResponse(emails=page, next_page_token=token)

    # --- rules ----------------------------------------------------------------------------------

    async def CreateRule(
        self, request: notify_pb2.CreateRuleRequest, context: Ctx
    ) -> notify_pb2.Rule:
        fields = rules.normalize(mapping.rule_draft(request.rule), rules.WRITABLE)
        made = await rule_store.create_rule(self._pool, caller().tenant_id, fields)
        return mapping.rule_to_proto(made)

    async def GetRule(self, request: notify_pb2.GetRuleRequest, context: Ctx) -> notify_pb2.Rule:
        return mapping.rule_to_proto(
            await rule_store.get_rule(self._pool, caller().tenant_id, request.id)
        )

    async def ListRules(
        self, request: notify_pb2.ListRulesRequest, context: Ctx
    ) -> notify_pb2.ListRulesResponse:
        size = paging.page_size(request.page_size)
        filters: dict[str, object] = {}
        after = paging.after_id(request.page_token, filters)
        rows = await rule_store.list_rules(self._pool, caller().tenant_id, after, size + 1)
        page, token = paging.next_page(
            [mapping.rule_to_proto(r) for r in rows], size, lambda r: [r.id], filters
        )
        return notify_pb2.ListRulesResponse(rules=page, next_page_token=token)

    async def UpdateRule(
        self, request: notify_pb2.UpdateRuleRequest, context: Ctx
    ) -> notify_pb2.Rule:
        paths = updates.mask_paths(request.update_mask, request.rule, rules.WRITABLE)
        draft = rules.normalize(mapping.rule_draft(request.rule), paths)
        updated = await rule_store.update_rule(
            self._pool, caller().tenant_id, request.id, draft, paths, request.etag
        )
        return mapping.rule_to_proto(updated)

    async def DeleteRule(
        self, request: notify_pb2.DeleteRuleRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await rule_store.delete_rule(self._pool, caller().tenant_id, request.id, request.etag)
        return empty_pb2.Empty()

    # --- campaigns ------------------------------------------------------------------------------

    async def CreateCampaign(
        self, request: notify_pb2.CreateCampaignRequest, context: Ctx
    ) -> notify_pb2.Campaign:
        msg = request.campaign
        schedule = time_from_proto(msg, "schedule_time", "campaign.schedule_time")
        fields = campaigns.new_campaign(
            name=msg.name,
            template_id=msg.template_id,
            audience=mapping.audience_draft(msg.audience),
            schedule_time=schedule,
            rate_per_minute=msg.rate_per_minute,
        )
        made = await campaigns.create(self._pool, caller().tenant_id, fields, self._clock())
        return mapping.campaign_to_proto(made)

    async def GetCampaign(
        self, request: notify_pb2.GetCampaignRequest, context: Ctx
    ) -> notify_pb2.Campaign:
        return mapping.campaign_to_proto(
            await campaigns.get(self._pool, caller().tenant_id, request.id)
        )

    async def ListCampaigns(
        self, request: notify_pb2.ListCampaignsRequest, context: Ctx
    ) -> notify_pb2.ListCampaignsResponse:
        size = paging.page_size(request.page_size)
        filters: dict[str, object] = {}
        after = paging.after_id(request.page_token, filters)
        rows = await campaigns.list_campaigns(self._pool, caller().tenant_id, after, size + 1)
        page, token = paging.next_page(
            [mapping.campaign_to_proto(c) for c in rows], size, lambda c: [c.id], filters
        )
        return notify_pb2.ListCampaignsResponse(campaigns=page, next_page_token=token)

    async def PauseCampaign(
        self, request: notify_pb2.PauseCampaignRequest, context: Ctx
    ) -> notify_pb2.Campaign:
        moved = await campaigns.move(self._pool, caller().tenant_id, request.id, "pause")
        return mapping.campaign_to_proto(moved)

    async def ResumeCampaign(
        self, request: notify_pb2.ResumeCampaignRequest, context: Ctx
    ) -> notify_pb2.Campaign:
        moved = await campaigns.move(self._pool, caller().tenant_id, request.id, "resume")
        return mapping.campaign_to_proto(moved)

    async def CancelCampaign(
        self, request: notify_pb2.CancelCampaignRequest, context: Ctx
    ) -> notify_pb2.Campaign:
        moved = await campaigns.move(self._pool, caller().tenant_id, request.id, "cancel")
        return mapping.campaign_to_proto(moved)

    async def ListCampaignRecipients(
        self, request: notify_pb2.ListCampaignRecipientsRequest, context: Ctx
    ) -> notify_pb2.ListCampaignRecipientsResponse:
        size = paging.page_size(request.page_size)
        filters: dict[str, object] = {"campaign_id": request.campaign_id}
        after = paging.after_id(request.page_token, filters)
        rows = await campaigns.recipients(
            self._pool, caller().tenant_id, request.campaign_id, after, size + 1
        )
        page, token = paging.next_page(
            [mapping.recipient_to_proto(r) for r in rows], size, lambda r: [r.contact_id], filters
        )
        return notify_pb2.ListCampaignRecipientsResponse(recipients=page, next_page_token=token)


def _object(given: dict[str, Any], key: str) -> dict[str, Any]:
    value = given.get(key, {})
    if not isinstance(value, dict):
        raise invalid_field(f"variables.{key}", "must be an object")
    return value
