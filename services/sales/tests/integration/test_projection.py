"""The contact projection stays right whatever the delivery: repeats, late and early events."""

from __future__ import annotations

from typing import Any

import grpc

from crm.sales.v1 import sales_pb2
from crmkit.ids import new_id
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_deal, create_lead
from .test_scoring import until

CREATED, UPDATED = "crm.contacts.contact.created.v1", "crm.contacts.contact.updated.v1"
DELETED = "crm.contacts.contact.deleted.v1"


def _contact(contact_id: str, version: int, name: str, email: str) -> dict[str, Any]:
    return {
        "contact": {
            "id": contact_id,
            "first_name": name,
            "last_name": "Lamarr",
            "emails": [email],
            "version": str(version),
        }
    }


async def _lead(service: Running, tenant: Tenant, lead_id: str) -> sales_pb2.Lead:
    return await service.stub.GetLead(sales_pb2.GetLeadRequest(id=lead_id), metadata=tenant.md())


async def _marker(service: Running, tenant: Tenant) -> None:
    """A contact event after all others: once its contact shows, the earlier ones were applied."""
    contact_id = new_id()
    lead = await create_lead(service, tenant, first_name="Marker", contact_id=contact_id)
    await service.publish(tenant.id, CREATED, contact_id, 1, _contact(contact_id, 1, "M", "m@x.io"))

    async def shown() -> bool:
        return (await _lead(service, tenant, lead.id)).contact.first_name == "M"

    await until(shown, "the marker contact")


async def test_repeated_and_out_of_order_events(service: Running, tenant: Tenant) -> None:
    contact_id = new_id()
    lead = await create_lead(service, tenant, first_name="Hedy", contact_id=contact_id)
    v1 = _contact(contact_id, 1, "Hedy", "hedy@example.com")
    v3 = _contact(contact_id, 3, "Hedwig", "hedwig@example.com")
    v2 = _contact(contact_id, 2, "Old", "old@example.com")
    await service.publish(tenant.id, CREATED, contact_id, 1, v1)
    event_id = await service.publish(tenant.id, UPDATED, contact_id, 3, v3)
    await service.publish(tenant.id, UPDATED, contact_id, 3, v3, event_id=event_id)  # again
    await service.publish(tenant.id, UPDATED, contact_id, 2, v2)  # late
    await service.publish(tenant.id, CREATED, contact_id, 1, v1)  # very late
    await _marker(service, tenant)
    summary = (await _lead(service, tenant, lead.id)).contact
    assert (summary.first_name, summary.email) == ("Hedwig", "hedwig@example.com")


async def test_a_deleted_contact_is_unlinked_from_leads_and_deals(
    service: Running, tenant: Tenant
) -> None:
    contact_id = new_id()
    lead = await create_lead(service, tenant, first_name="Hedy", contact_id=contact_id)
    deal = await create_deal(service, tenant, contact_id=contact_id)
    await service.publish(tenant.id, CREATED, contact_id, 1, _contact(contact_id, 1, "H", "h@x.io"))
    await service.publish(tenant.id, DELETED, contact_id, 2, {"id": contact_id, "version": "2"})
    await service.publish(tenant.id, UPDATED, contact_id, 1, _contact(contact_id, 1, "H", "h@x.io"))
    await _marker(service, tenant)
    unlinked = await _lead(service, tenant, lead.id)
    assert (unlinked.contact_id, unlinked.version) == ("", 2)
    assert not unlinked.HasField("contact")
    got = await service.stub.GetDeal(sales_pb2.GetDealRequest(id=deal.id), metadata=tenant.md())
    assert (got.contact_id, got.version) == ("", 2)
    updates = await service.outbox_events(tenant.id, "crm.sales.lead.updated.v1")
    assert [u["changed_fields"] for u in updates] == [["contact_id"]]
    # A deleted contact cannot be linked again.
    refused = sales_pb2.CreateLeadRequest(
        lead=sales_pb2.Lead(first_name="X", contact_id=contact_id)
    )
    err = await failure(service.stub.CreateLead(refused, metadata=tenant.md()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lead.contact_id" in (err.details() or "")
