"""Protobuf <-> domain values of notify."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from crm.notify.v1 import notify_pb2
from crmkit.errors import Invalid
from crmkit.protomap import enum_from_proto, proto_name, stamp
from trellis_notify import campaigns, rules, templates
from trellis_notify.audience import Suppression
from trellis_notify.domain import Webhook, WebhookFields
from trellis_notify.mail_store import Email
from trellis_notify.store import Attempt, Delivery

_STATUS_TO_PROTO = {
    "pending": notify_pb2.DELIVERY_STATUS_PENDING,
    "sending": notify_pb2.DELIVERY_STATUS_PENDING,  # an attempt is under way
    "delivered": notify_pb2.DELIVERY_STATUS_DELIVERED,
    "failed": notify_pb2.DELIVERY_STATUS_FAILED,
    "dead": notify_pb2.DELIVERY_STATUS_DEAD_LETTERED,
}
_STATUS_FROM_PROTO: dict[int, str] = {
    number: name for name, number in _STATUS_TO_PROTO.items() if name != "sending"
}


V = TypeVar("V", bound=int)  # a proto enum's ValueType


def _by_name(values: Iterable[tuple[str, V]], prefix: str) -> dict[str, V]:
    """Stored names that are the proto names' lower-case suffixes, so a new value cannot be
    missed."""
    return {
        name.removeprefix(prefix).lower(): number
        for name, number in values
        if name != prefix + "UNSPECIFIED"
    }


def _filter_status(table: Mapping[int, str], what: str, number: int, path: str) -> str | None:
    """The stored status a filter asks for; None for UNSPECIFIED (no filter)."""
    if number == 0:
        return None
    found = table.get(number)
    if found is None:
        raise Invalid([(path, f"unknown {what} {number}")])
    return found


def webhook_draft(msg: notify_pb2.Webhook) -> WebhookFields:
    return WebhookFields(
        url=msg.url,
        description=msg.description,
        event_types=tuple(msg.event_types),
        disabled=msg.disabled,
    )


def webhook_to_proto(webhook: Webhook, *, with_secret: bool = False) -> notify_pb2.Webhook:
    f = webhook.fields
    msg = notify_pb2.Webhook(
        id=webhook.id,
        url=f.url,
        description=f.description,
        event_types=f.event_types,
        disabled=f.disabled,
        disabled_reason=webhook.disabled_reason,
        secret=webhook.secret if with_secret else "",
        version=webhook.version,
        etag=webhook.etag,
    )
    if webhook.previous_secret:
        stamp(msg.previous_secret_expire_time, webhook.previous_secret_expires_at)
    stamp(msg.create_time, webhook.create_time)
    stamp(msg.update_time, webhook.update_time)
    return msg


def status_from_proto(number: int, path: str) -> str | None:
    return _filter_status(_STATUS_FROM_PROTO, "delivery status", number, path)


def _attempt_to_proto(attempt: Attempt) -> notify_pb2.WebhookAttempt:
    msg = notify_pb2.WebhookAttempt(
        number=attempt.number,
        status_code=attempt.status_code,
        error=attempt.error,
        latency_ms=attempt.latency_ms,
        response_snippet=attempt.response_snippet,
    )
    stamp(msg.time, attempt.time)
    return msg


def delivery_to_proto(delivery: Delivery) -> notify_pb2.WebhookDelivery:
    msg = notify_pb2.WebhookDelivery(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        subject=delivery.subject,
        status=_STATUS_TO_PROTO[delivery.status],
        attempt_count=delivery.attempts,
        replay=delivery.replay,
        attempts=[_attempt_to_proto(a) for a in delivery.log],
    )
    if delivery.status in ("pending", "sending"):
        stamp(msg.next_attempt_time, delivery.next_attempt_at)
    stamp(msg.create_time, delivery.create_time)
    stamp(msg.deliver_time, delivery.deliver_time)
    return msg


_REASONS = _by_name(notify_pb2.SuppressionReason.items(), "SUPPRESSION_REASON_")


def suppression_to_proto(entry: Suppression) -> notify_pb2.Suppression:
    msg = notify_pb2.Suppression(
        email=entry.email, purpose=entry.purpose, reason=_REASONS[entry.reason], detail=entry.detail
    )
    stamp(msg.create_time, entry.create_time)
    return msg


def template_draft(msg: notify_pb2.Template) -> templates.TemplateFields:
    return templates.TemplateFields(
        name=msg.name,
        purpose=msg.purpose,
        default_locale=msg.default_locale,
        contents=tuple(
            templates.Content(c.locale, c.subject, c.text, c.html) for c in msg.contents
        ),
    )


def template_to_proto(template: templates.Template) -> notify_pb2.Template:
    f = template.fields
    msg = notify_pb2.Template(
        id=template.id,
        name=f.name,
        purpose=f.purpose,
        default_locale=f.default_locale,
        contents=[
            notify_pb2.TemplateContent(locale=c.locale, subject=c.subject, text=c.text, html=c.html)
            for c in f.contents
        ],
        version=template.version,
        etag=template.etag,
    )
    stamp(msg.create_time, template.create_time)
    stamp(msg.update_time, template.update_time)
    return msg


_EMAIL_STATUS_TO_PROTO = {
    "queued": notify_pb2.EMAIL_STATUS_QUEUED,
    "sending": notify_pb2.EMAIL_STATUS_QUEUED,
    "sent": notify_pb2.EMAIL_STATUS_SENT,
    "suppressed": notify_pb2.EMAIL_STATUS_SUPPRESSED,
    "bounced": notify_pb2.EMAIL_STATUS_BOUNCED,
    "failed": notify_pb2.EMAIL_STATUS_FAILED,
}
_EMAIL_STATUS_FROM_PROTO: dict[int, str] = {
    number: name for name, number in _EMAIL_STATUS_TO_PROTO.items() if name != "sending"
}


def email_status_from_proto(number: int, path: str) -> str | None:
    return _filter_status(_EMAIL_STATUS_FROM_PROTO, "email status", number, path)


def email_to_proto(email: Email) -> notify_pb2.Email:
    msg = notify_pb2.Email(
        id=email.id,
        template_id=email.template_id,
        to=email.to,
        contact_id=email.contact_id,
        purpose=email.purpose,
        locale=email.locale,
        subject=email.subject,
        status=_EMAIL_STATUS_TO_PROTO[email.status],
        error=email.error,
        attempt_count=email.attempts,
        origin=email.origin,
    )
    stamp(msg.create_time, email.create_time)
    stamp(msg.send_time, email.send_time)
    return msg


_OPERATOR = "CONDITION_OPERATOR_"
_RECIPIENT = "RECIPIENT_KIND_"


def rule_draft(msg: notify_pb2.Rule) -> rules.RuleFields:
    # Lenient on purpose: an unknown number reads as unset, which rules.normalize names.
    return rules.RuleFields(
        name=msg.name,
        event_type=msg.event_type,
        conditions=tuple(
            rules.Condition(
                c.field,
                enum_from_proto(
                    notify_pb2.ConditionOperator.Name, c.operator, _OPERATOR, rules.Operator
                ),
                tuple(c.values),
            )
            for c in msg.conditions
        ),
        action=rules.Action(
            template_id=msg.action.template_id,
            recipient=enum_from_proto(
                notify_pb2.RecipientKind.Name, msg.action.recipient, _RECIPIENT, rules.Recipient
            ),
            address=msg.action.address,
            contact_field=msg.action.contact_field,
            webhook_id=msg.action.webhook_id,
        ),
        disabled=msg.disabled,
    )


def rule_to_proto(rule: rules.Rule) -> notify_pb2.Rule:
    f, action = rule.fields, rule.fields.action
    msg = notify_pb2.Rule(
        id=rule.id,
        name=f.name,
        event_type=f.event_type,
        conditions=[
            notify_pb2.Condition(
                field=c.field,
                operator=notify_pb2.ConditionOperator.Value(proto_name(c.operator, _OPERATOR)),
                values=c.values,
            )
            for c in f.conditions
        ],
        action=notify_pb2.RuleAction(
            template_id=action.template_id,
            recipient=notify_pb2.RecipientKind.Value(proto_name(action.recipient, _RECIPIENT)),
            address=action.address,
            contact_field=action.contact_field,
            webhook_id=action.webhook_id,
        ),
        disabled=f.disabled,
        version=rule.version,
        etag=rule.etag,
    )
    stamp(msg.create_time, rule.create_time)
    stamp(msg.update_time, rule.update_time)
    return msg


_CAMPAIGN_STATES = _by_name(notify_pb2.CampaignState.items(), "CAMPAIGN_STATE_")


def audience_draft(msg: notify_pb2.Audience) -> campaigns.Audience:
    return campaigns.Audience(
        contact_ids=tuple(msg.contact_ids),
        tag=msg.tag,
        company_id=msg.company_id,
        lifecycle_stage=msg.lifecycle_stage,
    )


def campaign_to_proto(campaign: campaigns.Campaign) -> notify_pb2.Campaign:
    f, a, t = campaign.fields, campaign.fields.audience, campaign.totals
    msg = notify_pb2.Campaign(
        id=campaign.id,
        name=f.name,
        template_id=f.template_id,
        audience=notify_pb2.Audience(
            contact_ids=a.contact_ids,
            tag=a.tag,
            company_id=a.company_id,
            lifecycle_stage=a.lifecycle_stage,
        ),
        rate_per_minute=f.rate_per_minute,
        state=_CAMPAIGN_STATES[campaign.state],
        totals=notify_pb2.CampaignTotals(
            recipients=t.recipients, pending=t.pending, queued=t.queued, skipped=t.skipped
        ),
        error=campaign.error,
        version=campaign.version,
    )
    stamp(msg.schedule_time, f.schedule_time)
    stamp(msg.create_time, campaign.create_time)
    stamp(msg.update_time, campaign.update_time)
    return msg


def recipient_to_proto(recipient: campaigns.Recipient) -> notify_pb2.CampaignRecipient:
    return notify_pb2.CampaignRecipient(
        contact_id=recipient.contact_id,
        status=recipient.status,
        email_id=recipient.email_id,
        reason=recipient.reason,
    )
