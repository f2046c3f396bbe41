"""Consent per contact and purpose: recorded with its legal basis, source and time, changed
with a new version and one consent.changed event, the same values again changing nothing;
checked input; invisible to other tenants; gone with its contact."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from crm.contacts.v1 import contacts_pb2
from crmkit.errors import violations_of
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_contact

GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN


async def _set(
    service: Running, tenant: Tenant, contact_id: str, **fields: Any
) -> contacts_pb2.Consent:
    return await service.stub.SetConsent(
        contacts_pb2.SetConsentRequest(
            contact_id=contact_id,
            consent=contacts_pb2.Consent(**fields),
        ),
        metadata=tenant.md(),
    )


async def _consent_events(service: Running, tenant: Tenant) -> list[dict[str, Any]]:
    types = await service.outbox_types(tenant.id)
    data = await service.outbox_data(tenant.id)
    return [json.loads(d) for t, d in zip(types, data, strict=True) if ".consent." in t]


async def test_consent_is_recorded_changed_and_listed(service: Running, tenant: Tenant) -> None:
    contact = await create_contact(service, tenant, first_name="Ada")
    given = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    stamp = contacts_pb2.Consent().time
    stamp.FromDatetime(given)
    first = await _set(
        service,
        tenant,
        contact.id,
        purpose="marketing_email",
        status=GRANTED,
        legal_basis=contacts_pb2.LEGAL_BASIS_CONSENT,
        source=" signup form ",
        time=stamp,
    )
    assert (first.contact_id, first.purpose, first.status, first.source, first.version) == (
        contact.id,
        "marketing_email",
        GRANTED,
        "signup form",
        1,
    )
    assert first.time.ToDatetime(UTC) == given

    same = await _set(
        service,
        tenant,
        contact.id,
        purpose="marketing_email",
        status=GRANTED,
        legal_basis=contacts_pb2.LEGAL_BASIS_CONSENT,
        source="signup form",
        time=stamp,
    )
    assert same == first  # nothing changed: no new version, no event

    withdrawn = await _set(
        service,
        tenant,
        contact.id,
        purpose="marketing_email",
        status=WITHDRAWN,
        source="unsubscribe link",
    )
    assert (withdrawn.id, withdrawn.version, withdrawn.status) == (first.id, 2, WITHDRAWN)
    assert withdrawn.legal_basis == contacts_pb2.LEGAL_BASIS_UNSPECIFIED
    # Without a time, the time of the request.
    assert abs(withdrawn.time.ToDatetime(UTC) - datetime.now(UTC)) < timedelta(minutes=1)

    await _set(
        service,
        tenant,
        contact.id,
        purpose="transactional_email",
        status=GRANTED,
        legal_basis=contacts_pb2.LEGAL_BASIS_PERFORMANCE_OF_CONTRACT,
    )
    events = await _consent_events(service, tenant)
    assert [
        (e["consent"]["purpose"], e["consent"]["status"], e["consent"]["version"]) for e in events
    ] == [
        ("marketing_email", "CONSENT_STATUS_GRANTED", "1"),
        ("marketing_email", "CONSENT_STATUS_WITHDRAWN", "2"),
        ("transactional_email", "CONSENT_STATUS_GRANTED", "1"),
    ]
    assert {e["consent"]["contact_id"] for e in events} == {contact.id}

    page = await service.stub.ListConsents(
        contacts_pb2.ListConsentsRequest(contact_id=contact.id, page_size=1), metadata=tenant.md()
    )
    assert [c.purpose for c in page.consents] == ["marketing_email"]
    rest = await service.stub.ListConsents(
        contacts_pb2.ListConsentsRequest(
            contact_id=contact.id, page_size=1, page_token=page.next_page_token
        ),
        metadata=tenant.md(),
    )
    assert [c.purpose for c in rest.consents] == ["transactional_email"]
    assert rest.next_page_token == ""


async def test_consents_go_with_their_contact(service: Running, tenant: Tenant) -> None:
    contact = await create_contact(service, tenant, first_name="Ada")
    await _set(service, tenant, contact.id, purpose="marketing_email", status=WITHDRAWN)
    await service.stub.DeleteContact(
        contacts_pb2.DeleteContactRequest(id=contact.id), metadata=tenant.md()
    )
    assert await service.count("consents", tenant.id) == 0
    err = await failure(
        service.stub.ListConsents(
            contacts_pb2.ListConsentsRequest(contact_id=contact.id), metadata=tenant.md()
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND


async def test_another_tenant_cannot_see_or_set_consent(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    contact = await create_contact(service, tenant, first_name="Ada")
    await _set(service, tenant, contact.id, purpose="marketing_email", status=WITHDRAWN)
    for call in (
        _set(service, other_tenant, contact.id, purpose="marketing_email", status=WITHDRAWN),
        service.stub.ListConsents(
            contacts_pb2.ListConsentsRequest(contact_id=contact.id), metadata=other_tenant.md()
        ),
        _set(service, tenant, "not-a-contact", purpose="marketing_email", status=WITHDRAWN),
    ):
        err = await failure(call)
        assert err.code() is grpc.StatusCode.NOT_FOUND
    assert await service.count("consents", other_tenant.id) == 0


@pytest.mark.parametrize(
    ("consent", "fields"),
    [
        ({"purpose": "", "status": WITHDRAWN}, ["consent.purpose"]),
        ({"purpose": "Marketing Email", "status": WITHDRAWN}, ["consent.purpose"]),
        ({"purpose": "marketing_email"}, ["consent.status"]),
        ({"purpose": "marketing_email", "status": 9}, ["consent.status"]),
        ({"purpose": "marketing_email", "status": GRANTED}, ["consent.legal_basis"]),
        (
            {"purpose": "marketing_email", "status": WITHDRAWN, "source": "a\u202eb"},
            ["consent.source"],
        ),
        ({"purpose": "m" * 65, "status": WITHDRAWN}, ["consent.purpose"]),
        (
            {"purpose": "marketing_email", "status": WITHDRAWN, "source": "s" * 201},
            ["consent.source"],
        ),
    ],
)
async def test_bad_consent_is_refused_naming_the_fields(
    service: Running, tenant: Tenant, consent: dict[str, Any], fields: list[str]
) -> None:
    contact = await create_contact(service, tenant, first_name="Ada")
    err = await failure(_set(service, tenant, contact.id, **consent))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations_of(err)] == fields
    assert await service.count("consents", tenant.id) == 0


async def test_a_consent_time_in_the_future_is_refused(service: Running, tenant: Tenant) -> None:
    contact = await create_contact(service, tenant, first_name="Ada")
    stamp = contacts_pb2.Consent().time
    stamp.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    err = await failure(
        _set(service, tenant, contact.id, purpose="marketing_email", status=WITHDRAWN, time=stamp)
    )
    assert [f for f, _ in violations_of(err)] == ["consent.time"]
