"""Rules: an event (with conditions on its data) sends a template to the contact, the owner or
an address, or calls a webhook; once per event, even when the event comes twice."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from crm.notify.v1 import notify_pb2
from crmkit.errors import violations_of
from crmkit.ids import new_id
from trellis_devstack.capture import Mailbox
from trellis_devstack.testing import eventually, failure

from .support import Receiver, Running, Tenant, create_webhook, publish
from .test_audience import contact_data
from .test_email import _contact

NOTE = notify_pb2.Template(
    name="Note",
    contents=[
        notify_pb2.TemplateContent(
            locale="en",
            subject="{{ contact.first_name or 'Owner' }}: {{ event.deal.name or event.ticket.subject or 'hello' }}",
            text="Event data: {{ event }}",
        )
    ],
)


async def _template(service: Running, tenant: Tenant) -> notify_pb2.Template:
    return await service.stub.CreateTemplate(
        notify_pb2.CreateTemplateRequest(template=NOTE), metadata=tenant.md()
    )


async def _rule(service: Running, tenant: Tenant, **fields: Any) -> notify_pb2.Rule:
    return await service.stub.CreateRule(
        notify_pb2.CreateRuleRequest(rule=notify_pb2.Rule(name="r", **fields)), metadata=tenant.md()
    )


async def test_a_rule_fires_once_per_event_even_when_it_comes_twice(
    service: Running, tenant: Tenant, mailbox: Mailbox
) -> None:
    template = await _template(service, tenant)
    await _rule(
        service,
        tenant,
        event_type="crm.contacts.contact.created.v1",
        action=notify_pb2.RuleAction(
            template_id=template.id, recipient=notify_pb2.RECIPIENT_KIND_CONTACT
        ),
    )
    ada, bob = new_id(), new_id()
    ada_mail, bob_mail = f"ada.{ada[-8:]}@example.com", f"bob.{bob[-8:]}@example.com"
    data = contact_data(ada, 1, ada_mail, first_name="Ada")
    first = await publish(service.js, tenant.id, record_id=ada, action="created", data=data)
    # The same event again, past the stream's dedupe (a re-publish, a re-drive).
    await publish(
        service.js,
        tenant.id,
        record_id=ada,
        action="created",
        data=data,
        event_id=first,
        msg_id=new_id(),
    )
    await publish(
        service.js,
        tenant.id,
        record_id=bob,
        action="created",
        data=contact_data(bob, 1, bob_mail, first_name="Bob"),
    )
    await eventually(lambda: mailbox.to(bob_mail), what="the later event's mail")
    await eventually(lambda: mailbox.to(ada_mail), what="the first mail")
    assert len(mailbox.to(ada_mail)) == 1
    assert mailbox.to(ada_mail)[0]["Subject"] == "Ada: hello"
    # An update is not a creation: no mail.
    marker = new_id()
    await publish(
        service.js,
        tenant.id,
        record_id=ada,
        version=2,
        data=contact_data(ada, 2, ada_mail, first_name="Ada"),
    )
    await publish(
        service.js,
        tenant.id,
        record_id=marker,
        action="created",
        data=contact_data(marker, 1, f"m.{marker[-8:]}@example.com"),
    )
    await eventually(lambda: mailbox.to(f"m.{marker[-8:]}@example.com"), what="the marker's mail")
    assert len(mailbox.to(ada_mail)) == 1
    sent = await service.stub.ListEmails(notify_pb2.ListEmailsRequest(), metadata=tenant.md())
    assert {e.origin.split(":")[0] for e in sent.emails} == {"rule"}


async def test_conditions_and_the_owner(service: Running, tenant: Tenant, mailbox: Mailbox) -> None:
    template = await _template(service, tenant)
    await _rule(
        service,
        tenant,
        event_type="crm.sales.deal.won.v1",
        conditions=[
            notify_pb2.Condition(
                field="deal.amount", operator=notify_pb2.CONDITION_OPERATOR_GT, values=["1000"]
            ),
            notify_pb2.Condition(
                field="deal.currency",
                operator=notify_pb2.CONDITION_OPERATOR_EQ,
                values=["EUR", "USD"],
            ),
        ],
        action=notify_pb2.RuleAction(
            template_id=template.id, recipient=notify_pb2.RECIPIENT_KIND_OWNER
        ),
    )
    owner = f"owner.{new_id()[-8:]}@example.com"

    async def won(name: str, amount: str, currency: str = "EUR") -> None:
        deal = {
            "id": new_id(),
            "name": name,
            "amount": amount,
            "currency": currency,
            "owner_id": owner,
        }
        await publish(
            service.js, tenant.id, domain="sales", entity="deal", action="won", data={"deal": deal}
        )

    await won("small", "500")
    await won("francs", "5000", "CHF")
    await won("big", "5000")
    await eventually(lambda: mailbox.to(owner), what="the owner's mail")
    assert [m["Subject"] for m in mailbox.to(owner)] == ["Owner: big"]


async def test_a_rule_writes_to_the_contact_of_a_ticket_or_calls_a_webhook(
    service: Running, tenant: Tenant, mailbox: Mailbox, receiver: Receiver
) -> None:
    template = await _template(service, tenant)
    address = f"cat.{new_id()[-8:]}@example.com"
    contact_id = await _contact(service, tenant, address, first_name="Cat")
    await _rule(
        service,
        tenant,
        event_type="crm.support.ticket.created.v1",
        action=notify_pb2.RuleAction(
            template_id=template.id, recipient=notify_pb2.RECIPIENT_KIND_CONTACT
        ),
    )
    hook = await create_webhook(service, tenant, receiver.url, ["crm.sales.*"])
    await _rule(
        service,
        tenant,
        event_type="crm.support.ticket.sla_breached.v1",
        action=notify_pb2.RuleAction(webhook_id=hook.id),
    )
    ticket = {"id": new_id(), "subject": "Printer on fire", "contact_id": contact_id}
    await publish(
        service.js,
        tenant.id,
        domain="support",
        entity="ticket",
        action="created",
        data={"ticket": ticket},
    )
    breach = await publish(
        service.js,
        tenant.id,
        domain="support",
        entity="ticket",
        action="sla_breached",
        data={"ticket": ticket},
    )
    await eventually(lambda: mailbox.to(address), what="the acknowledgement")
    assert mailbox.to(address)[0]["Subject"] == "Cat: Printer on fire"
    await eventually(lambda: receiver.accepted(), what="the escalation webhook")
    assert [r.headers["webhook-id"] for r in receiver.accepted()] == [breach]


async def _invalid(call: Awaitable[object]) -> list[str]:
    err = await failure(call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return [f for f, _ in violations_of(err)]


@pytest.mark.parametrize(
    ("rule", "fields"),
    [
        ({}, ["rule.name", "rule.event_type", "rule.action"]),
        (
            {
                "name": "r",
                "event_type": "*",
                "action": {"template_id": new_id(), "webhook_id": new_id()},
            },
            ["rule.action"],
        ),
        (
            {"name": "r", "event_type": "*", "action": {"template_id": "x"}},
            ["rule.action.template_id", "rule.action.recipient"],
        ),
        (
            {
                "name": "r",
                "event_type": "*",
                "action": {
                    "template_id": new_id(),
                    "recipient": notify_pb2.RECIPIENT_KIND_ADDRESS,
                    "address": "nope",
                },
            },
            ["rule.action.address"],
        ),
        (
            {
                "name": "r",
                "event_type": "crm.Sales",
                "conditions": [
                    {
                        "field": "a..b",
                        "operator": notify_pb2.CONDITION_OPERATOR_EQ,
                        "values": ["1"],
                    },
                    {"field": "a", "operator": notify_pb2.CONDITION_OPERATOR_GT, "values": ["x"]},
                    {
                        "field": "a",
                        "operator": notify_pb2.CONDITION_OPERATOR_EXISTS,
                        "values": ["x"],
                    },
                    {"field": "a"},
                ],
                "action": {"webhook_id": new_id()},
            },
            [
                "rule.event_type",
                "rule.conditions[0].field",
                "rule.conditions[1].values[0]",
                "rule.conditions[2].values",
                "rule.conditions[3].operator",
            ],
        ),
    ],
)
async def test_bad_rules_are_refused_naming_the_fields(
    service: Running, tenant: Tenant, rule: dict[str, Any], fields: list[str]
) -> None:
    message = notify_pb2.Rule(**rule)
    got = await _invalid(
        service.stub.CreateRule(notify_pb2.CreateRuleRequest(rule=message), metadata=tenant.md())
    )
    assert got == fields


async def test_rules_name_only_the_tenants_targets_and_stay_its_own(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await _template(service, other_tenant)
    action = notify_pb2.RuleAction(
        template_id=theirs.id, recipient=notify_pb2.RECIPIENT_KIND_CONTACT
    )
    assert await _invalid(_rule(service, tenant, event_type="*", action=action)) == [
        "rule.action.template_id"
    ]
    assert await _invalid(
        _rule(service, tenant, event_type="*", action=notify_pb2.RuleAction(webhook_id=new_id()))
    ) == ["rule.action.webhook_id"]
    mine = await _template(service, tenant)
    rule = await _rule(
        service,
        tenant,
        event_type="crm.contacts.*",
        action=notify_pb2.RuleAction(
            template_id=mine.id, recipient=notify_pb2.RECIPIENT_KIND_CONTACT
        ),
    )
    stub, md = service.stub, other_tenant.md()
    for call in (
        stub.GetRule(notify_pb2.GetRuleRequest(id=rule.id), metadata=md),
        stub.UpdateRule(
            notify_pb2.UpdateRuleRequest(id=rule.id, rule=notify_pb2.Rule(disabled=True)),
            metadata=md,
        ),
        stub.DeleteRule(notify_pb2.DeleteRuleRequest(id=rule.id), metadata=md),
    ):
        err = await failure(call)
        assert err.code() is grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListRules(notify_pb2.ListRulesRequest(), metadata=md)).rules) == []

    disabled = await stub.UpdateRule(
        notify_pb2.UpdateRuleRequest(
            id=rule.id, rule=notify_pb2.Rule(disabled=True), etag=rule.etag
        ),
        metadata=tenant.md(),
    )
    assert (disabled.disabled, disabled.version, disabled.action.template_id) == (True, 2, mine.id)
    listed = await stub.ListRules(notify_pb2.ListRulesRequest(), metadata=tenant.md())
    assert [r.id for r in listed.rules] == [rule.id]
    await stub.DeleteRule(
        notify_pb2.DeleteRuleRequest(id=rule.id, etag=disabled.etag), metadata=tenant.md()
    )
