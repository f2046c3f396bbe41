"""Conversion: the contact exists once, the deal points at it, retries create nothing new."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from crm.contacts.v1 import contacts_pb2
from crm.sales.v1 import sales_pb2
from trellis_devstack.testing import failure

from .conftest import Hosted
from .support import Running, Tenant, create_lead


def _email() -> str:
    return f"grace.{uuid.uuid4().hex[:8]}@example.com"


def _convert(lead_id: str, **kw: object) -> sales_pb2.ConvertLeadRequest:
    return sales_pb2.ConvertLeadRequest(id=lead_id, **kw)  # type: ignore[arg-type]


async def _contacts_with(service: Running, tenant: Tenant, email: str) -> list[str]:
    found = await service.contacts.ListContacts(
        contacts_pb2.ListContactsRequest(email=email), metadata=tenant.md()
    )
    return [c.id for c in found.contacts]


async def test_convert_creates_the_contact_and_a_deal_once(
    service: Running, tenant: Tenant
) -> None:
    email = _email()
    lead = await create_lead(
        service, tenant, first_name="Grace", last_name="Hopper", email=email, company_name="Navy"
    )
    deal = sales_pb2.Deal(amount=500_00, currency="usd")
    request = _convert(lead.id, create_deal=True, deal=deal)
    done = await service.stub.ConvertLead(request, metadata=tenant.md(key="convert-1"))
    assert done.contact_created
    assert done.lead.status == sales_pb2.LEAD_STATUS_CONVERTED
    assert done.lead.contact_id == done.contact_id
    assert done.lead.converted_deal_id == done.deal.id
    assert (done.deal.contact_id, done.deal.lead_id) == (done.contact_id, lead.id)
    assert (done.deal.name, done.deal.currency) == ("Navy", "USD")
    assert await _contacts_with(service, tenant, email) == [done.contact_id]

    # The same key: the first answer. Another key, or none: 409, and nothing new anywhere.
    again = await service.stub.ConvertLead(request, metadata=tenant.md(key="convert-1"))
    assert again == done
    for md in (tenant.md(key="convert-2"), tenant.md()):
        err = await failure(service.stub.ConvertLead(request, metadata=md))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already converted" in (err.details() or "")
    assert await _contacts_with(service, tenant, email) == [done.contact_id]
    assert await service.count("deals", tenant.id) == 1
    types = await service.outbox_types(tenant.id)
    assert types.count("crm.sales.lead.converted.v1") == 1
    assert types.count("crm.sales.deal.created.v1") == 1


async def test_an_existing_contact_with_the_email_is_reused(
    service: Running, tenant: Tenant
) -> None:
    email = _email()
    existing = await service.contacts.CreateContact(
        contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(emails=[email.upper()])),
        metadata=tenant.md(),
    )
    lead = await create_lead(service, tenant, first_name="Grace", email=email)
    done = await service.stub.ConvertLead(_convert(lead.id), metadata=tenant.md())
    assert (done.contact_id, done.contact_created) == (existing.id, False)
    assert not done.HasField("deal")
    assert await _contacts_with(service, tenant, email) == [existing.id]


async def test_concurrent_conversions_make_one_contact(service: Running, tenant: Tenant) -> None:
    email = _email()
    lead = await create_lead(service, tenant, first_name="Grace", email=email)
    results = await asyncio.gather(
        *(
            service.stub.ConvertLead(
                _convert(lead.id, create_deal=True, deal=sales_pb2.Deal(currency="EUR")),
                metadata=tenant.md(key=f"k{i}"),
            )
            for i in range(4)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, sales_pb2.ConvertLeadResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert [e.code() for e in lost] == [grpc.StatusCode.FAILED_PRECONDITION] * 3
    assert len(await _contacts_with(service, tenant, email)) == 1
    assert await service.count("deals", tenant.id) == 1


async def test_disqualified_leads_and_leads_without_a_name_are_refused(
    service: Running, tenant: Tenant
) -> None:
    lead = await create_lead(
        service, tenant, first_name="No", status=sales_pb2.LEAD_STATUS_DISQUALIFIED
    )
    err = await failure(service.stub.ConvertLead(_convert(lead.id), metadata=tenant.md()))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    nameless = await create_lead(service, tenant, company_name="Only a company")
    err = await failure(service.stub.ConvertLead(_convert(nameless.id), metadata=tenant.md()))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A bad deal is refused before any contact is made.
    email = _email()
    fine = await create_lead(service, tenant, first_name="Fine", email=email)
    bad = _convert(fine.id, create_deal=True, deal=sales_pb2.Deal(currency="XXQ"))
    err = await failure(service.stub.ConvertLead(bad, metadata=tenant.md()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _contacts_with(service, tenant, email) == []


@pytest.mark.timeout(120)
async def test_contacts_down_is_unavailable_and_half_does_nothing(
    service: Running, tenant: Tenant, contacts_service: Hosted
) -> None:
    email = _email()
    lead = await create_lead(service, tenant, first_name="Grace", email=email)
    request = _convert(lead.id, create_deal=True, deal=sales_pb2.Deal(currency="EUR"))
    await contacts_service.stop()
    try:
        err = await failure(service.stub.ConvertLead(request, metadata=tenant.md(key="c")))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "contacts" in (err.details() or "")
        got = await service.stub.GetLead(sales_pb2.GetLeadRequest(id=lead.id), metadata=tenant.md())
        assert (got.status, got.version) == (sales_pb2.LEAD_STATUS_NEW, 1)
        assert await service.count("deals", tenant.id) == 0
    finally:
        await contacts_service.start()
    # The retry with the same key runs (an error is not recorded) and succeeds once the
    # channel has reconnected.
    deadline = time.monotonic() + 60
    done = None
    while done is None:
        try:
            done = await service.stub.ConvertLead(request, metadata=tenant.md(key="c"))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            assert code == grpc.StatusCode.UNAVAILABLE, code
            assert time.monotonic() < deadline, "contacts did not come back"
            await asyncio.sleep(0.2)
    assert await _contacts_with(service, tenant, email) == [done.contact_id]
    assert await service.count("deals", tenant.id) == 1
