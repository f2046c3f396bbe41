"""Campaigns: an audience resolved through the real contacts service (notify calling as
itself), sent at a bounded rate to contacts with marketing consent who are not suppressed,
paused half-way and resumed without writing to anyone twice."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from crm.contacts.v1 import contacts_pb2
from crm.notify.v1 import notify_pb2
from crmkit.errors import violations_of
from crmkit.ids import new_id
from trellis_devstack.capture import Mailbox
from trellis_devstack.testing import eventually, failure

from .support import Contacts, Running, Tenant
from .test_email import WELCOME


async def _marketing(service: Running, tenant: Tenant) -> notify_pb2.Template:
    template = notify_pb2.Template()
    template.CopyFrom(WELCOME)
    template.purpose = "marketing_email"
    return await service.stub.CreateTemplate(
        notify_pb2.CreateTemplateRequest(template=template), metadata=tenant.md()
    )


async def _person(
    contacts: Contacts, tenant: Tenant, name: str, *, tag: str, consent: str | None
) -> tuple[str, str]:
    """A contact made in the contacts service (notify learns it from the events)."""
    address = f"{name}.{new_id()[-8:]}@example.com"
    made = await contacts.stub.CreateContact(
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(first_name=name, emails=[address], tags=[tag])
        ),
        metadata=tenant.md("contacts:read", "contacts:write"),
    )
    if consent is not None:
        await contacts.stub.SetConsent(
            contacts_pb2.SetConsentRequest(
                contact_id=made.id,
                consent=contacts_pb2.Consent(
                    purpose="marketing_email",
                    status=contacts_pb2.ConsentStatus.Value(f"CONSENT_STATUS_{consent}"),
                    legal_basis=contacts_pb2.LEGAL_BASIS_CONSENT,
                ),
            ),
            metadata=tenant.md("contacts:read", "contacts:write"),
        )
    return made.id, address


async def _known(service: Running, tenant: Tenant, count: int, consents: int) -> bool:
    contacts = await service.query("SELECT 1 FROM contacts WHERE tenant_id = %s", tenant.id)
    granted = await service.query("SELECT 1 FROM consents WHERE tenant_id = %s", tenant.id)
    return len(contacts) == count and len(granted) == consents


async def _campaign(service: Running, tenant: Tenant, campaign_id: str) -> notify_pb2.Campaign:
    return await service.stub.GetCampaign(
        notify_pb2.GetCampaignRequest(id=campaign_id), metadata=tenant.md()
    )


async def test_a_campaign_paused_half_way_and_resumed_mails_each_recipient_once(
    service: Running, contacts: Contacts, tenant: Tenant, mailbox: Mailbox
) -> None:
    template = await _marketing(service, tenant)
    fans = [
        await _person(contacts, tenant, f"fan{i}", tag="vip", consent="GRANTED") for i in range(5)
    ]
    unsure = await _person(contacts, tenant, "unsure", tag="vip", consent=None)
    gone = await _person(contacts, tenant, "gone", tag="vip", consent="WITHDRAWN")
    quiet = await _person(contacts, tenant, "quiet", tag="vip", consent="GRANTED")
    other = await _person(contacts, tenant, "other", tag="newsletter", consent="GRANTED")
    await service.stub.CreateSuppression(
        notify_pb2.CreateSuppressionRequest(
            suppression=notify_pb2.Suppression(email=quiet[1], purpose="marketing_email")
        ),
        metadata=tenant.md(),
    )
    await eventually(lambda: _known(service, tenant, 9, 8), what="notify to know them all")

    made = await service.stub.CreateCampaign(
        notify_pb2.CreateCampaignRequest(
            campaign=notify_pb2.Campaign(
                name="Spring news",
                template_id=template.id,
                audience=notify_pb2.Audience(tag="vip"),
                rate_per_minute=60,  # one a second
            )
        ),
        metadata=tenant.md(),
    )
    assert made.state in (notify_pb2.CAMPAIGN_STATE_SCHEDULED, notify_pb2.CAMPAIGN_STATE_RUNNING)
    fan_addresses = {address for _, address in fans}
    await eventually(
        lambda: any(mailbox.to(a) for a in fan_addresses), what="the first campaign mail"
    )
    paused = await service.stub.PauseCampaign(
        notify_pb2.PauseCampaignRequest(id=made.id), metadata=tenant.md()
    )
    assert paused.state == notify_pb2.CAMPAIGN_STATE_PAUSED
    assert paused.totals.recipients == 8  # the vips
    assert paused.totals.pending > 0  # stopped half-way

    resumed = await service.stub.ResumeCampaign(
        notify_pb2.ResumeCampaignRequest(id=made.id), metadata=tenant.md()
    )
    assert resumed.state == notify_pb2.CAMPAIGN_STATE_RUNNING
    done = await eventually(
        lambda: _state(service, tenant, made.id, notify_pb2.CAMPAIGN_STATE_COMPLETED),
        within=60,
        what="the campaign to complete",
    )
    assert (
        done.totals.recipients,
        done.totals.pending,
        done.totals.queued,
        done.totals.skipped,
    ) == (
        8,
        0,
        5,
        3,
    )
    await eventually(lambda: all(mailbox.to(a) for a in fan_addresses), what="every fan's mail")
    assert [len(mailbox.to(a)) for a in sorted(fan_addresses)] == [1] * 5
    for _, address in (unsure, gone, quiet, other):
        assert mailbox.to(address) == []

    listed = await service.stub.ListCampaignRecipients(
        notify_pb2.ListCampaignRecipientsRequest(campaign_id=made.id, page_size=500),
        metadata=tenant.md(),
    )
    reasons = {r.contact_id: (r.status, r.reason) for r in listed.recipients}
    assert reasons[unsure[0]] == ("skipped", "no consent to marketing_email")
    assert reasons[gone[0]] == ("skipped", "consent to marketing_email withdrawn")
    assert reasons[quiet[0]] == ("skipped", "suppressed (manual)")
    assert {reasons[c][0] for c, _ in fans} == {"queued"}
    sent = await service.stub.ListEmails(
        notify_pb2.ListEmailsRequest(origin=f"campaign:{made.id}", page_size=500),
        metadata=tenant.md(),
    )
    assert len(sent.emails) == 8  # one per recipient, the skipped ones as suppressed

    # Finished: it cannot be resumed or paused again.
    err = await failure(
        service.stub.PauseCampaign(
            notify_pb2.PauseCampaignRequest(id=made.id), metadata=tenant.md()
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION


async def _state(
    service: Running, tenant: Tenant, campaign_id: str, state: int
) -> notify_pb2.Campaign | None:
    got = await _campaign(service, tenant, campaign_id)
    return got if got.state == state else None


async def test_a_campaign_to_listed_contacts_and_a_cancelled_one(
    service: Running, contacts: Contacts, tenant: Tenant, mailbox: Mailbox
) -> None:
    template = await _marketing(service, tenant)
    ann = await _person(contacts, tenant, "ann", tag="x", consent="GRANTED")
    ben = await _person(contacts, tenant, "ben", tag="x", consent="GRANTED")
    await eventually(lambda: _known(service, tenant, 2, 2), what="notify to know them")
    listed = await service.stub.CreateCampaign(
        notify_pb2.CreateCampaignRequest(
            campaign=notify_pb2.Campaign(
                name="Just Ann",
                template_id=template.id,
                audience=notify_pb2.Audience(contact_ids=[ann[0], ann[0]]),
                rate_per_minute=600,
            )
        ),
        metadata=tenant.md(),
    )
    await eventually(
        lambda: _state(service, tenant, listed.id, notify_pb2.CAMPAIGN_STATE_COMPLETED),
        what="the campaign to complete",
    )
    await eventually(lambda: mailbox.to(ann[1]), what="Ann's mail")

    later = service.clock().replace(year=service.clock().year + 1)
    stamp = notify_pb2.Campaign().schedule_time
    stamp.FromDatetime(later)
    future = await service.stub.CreateCampaign(
        notify_pb2.CreateCampaignRequest(
            campaign=notify_pb2.Campaign(
                name="Next year",
                template_id=template.id,
                audience=notify_pb2.Audience(contact_ids=[ben[0]]),
                schedule_time=stamp,
            )
        ),
        metadata=tenant.md(),
    )
    assert future.state == notify_pb2.CAMPAIGN_STATE_SCHEDULED
    cancelled = await service.stub.CancelCampaign(
        notify_pb2.CancelCampaignRequest(id=future.id), metadata=tenant.md()
    )
    assert cancelled.state == notify_pb2.CAMPAIGN_STATE_CANCELLED
    assert cancelled.totals.recipients == 0
    assert mailbox.to(ben[1]) == []


async def _invalid(call: Awaitable[object]) -> list[str]:
    err = await failure(call)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return [f for f, _ in violations_of(err)]


@pytest.mark.parametrize(
    ("campaign", "fields"),
    [
        ({}, ["campaign.name", "campaign.template_id", "campaign.audience"]),
        (
            {"name": "c", "audience": {"contact_ids": ["nope"], "tag": "x"}},
            ["campaign.template_id", "campaign.audience.contact_ids[0]", "campaign.audience"],
        ),
        (
            {"name": "c", "audience": {"lifecycle_stage": "boss", "company_id": "x"}},
            [
                "campaign.template_id",
                "campaign.audience.lifecycle_stage",
                "campaign.audience.company_id",
            ],
        ),
        (
            {"name": "c", "rate_per_minute": 10001, "audience": {"tag": "x"}},
            ["campaign.rate_per_minute"],
        ),
    ],
)
async def test_bad_campaigns_are_refused_naming_the_fields(
    service: Running, tenant: Tenant, campaign: dict[str, Any], fields: list[str]
) -> None:
    request = notify_pb2.CreateCampaignRequest(campaign=notify_pb2.Campaign(**campaign))
    assert await _invalid(service.stub.CreateCampaign(request, metadata=tenant.md())) == fields


async def test_campaigns_are_the_tenants_own(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await _marketing(service, other_tenant)
    err = await failure(
        service.stub.CreateCampaign(
            notify_pb2.CreateCampaignRequest(
                campaign=notify_pb2.Campaign(
                    name="c", template_id=theirs.id, audience=notify_pb2.Audience(tag="x")
                )
            ),
            metadata=tenant.md(),
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    mine = await _marketing(service, tenant)
    campaign = await service.stub.CreateCampaign(
        notify_pb2.CreateCampaignRequest(
            campaign=notify_pb2.Campaign(
                name="c", template_id=mine.id, audience=notify_pb2.Audience(tag="nobody-has-it")
            )
        ),
        metadata=tenant.md(),
    )
    stub, md = service.stub, other_tenant.md()
    for call in (
        stub.GetCampaign(notify_pb2.GetCampaignRequest(id=campaign.id), metadata=md),
        stub.PauseCampaign(notify_pb2.PauseCampaignRequest(id=campaign.id), metadata=md),
        stub.ResumeCampaign(notify_pb2.ResumeCampaignRequest(id=campaign.id), metadata=md),
        stub.CancelCampaign(notify_pb2.CancelCampaignRequest(id=campaign.id), metadata=md),
        stub.ListCampaignRecipients(
            notify_pb2.ListCampaignRecipientsRequest(campaign_id=campaign.id), metadata=md
        ),
    ):
        err = await failure(call)
        assert err.code() is grpc.StatusCode.NOT_FOUND
    assert (
        list((await stub.ListCampaigns(notify_pb2.ListCampaignsRequest(), metadata=md)).campaigns)
        == []
    )
    # Nobody has the tag: resolved through contacts, it completes with no recipients.
    done = await eventually(
        lambda: _state(service, tenant, campaign.id, notify_pb2.CAMPAIGN_STATE_COMPLETED),
        what="an empty campaign to complete",
    )
    assert done.totals.recipients == 0
