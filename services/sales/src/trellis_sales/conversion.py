"""Lead conversion: the lead's contact (found by email, or created in the contacts service as
the caller), an optional deal, and the lead marked converted, linked to both.

Everything of sales happens in one transaction that holds the lead's row lock, so concurrent
conversions of one lead run one after the other and the second finds it converted (409). The
contact is created with an idempotency key naming the effect ("lead-convert:<lead id>"): when
this transaction fails after contacts created it (sales' database, a crash, a lost answer),
the retry gets the same contact back, or finds it by its email. Nothing is written in sales
before contacts answered, and every input is checked before contacts is called.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import grpc

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crm.sales.v1 import events_pb2
from crmkit import db
from crmkit.client import Callee
from crmkit.context import Identity
from crmkit.errors import FailedPrecondition, ServiceError, check_etag
from crmkit.ids import known_id
from trellis_sales import deals, leads, mapping, metrics
from trellis_sales.domain import Deal, DealFields, Lead, LeadStatus
from trellis_sales.store import event, link, metadata


@dataclass(frozen=True)
class Converted:
    lead: Lead
    contact_id: str
    contact_created: bool
    deal: Deal | None


def _refuse(lead: Lead) -> None:
    status = lead.fields.status
    if status is LeadStatus.CONVERTED:
        raise FailedPrecondition("the lead is already converted", "id")
    if status is LeadStatus.DISQUALIFIED:
        raise FailedPrecondition(
            "a disqualified lead cannot be converted; set its status back first", "id"
        )
    f = lead.fields
    if not (f.contact_id or f.email or f.first_name or f.last_name):
        raise FailedPrecondition(
            "the lead needs a name or an email address to become a contact", "id"
        )


def deal_for(lead: Lead, draft: DealFields) -> DealFields:
    """The deal a conversion creates: the request's, named and owned after the lead."""
    f = lead.fields
    name = draft.name or f.company_name or f"{f.first_name} {f.last_name}".strip() or f.email
    return replace(draft, name=name, owner_id=draft.owner_id or f.owner_id)


class Contacts:
    """The calls a conversion makes to the contacts service, on behalf of the caller."""

    def __init__(self, callee: Callee) -> None:
        self._callee = callee
        self._stub = contacts_pb2_grpc.ContactsServiceStub(callee.channel)

    async def by_email(self, email: str) -> str | None:
        found = await self._callee.call(
            self._stub.ListContacts, contacts_pb2.ListContactsRequest(email=email, page_size=1)
        )
        return found.contacts[0].id if found.contacts else None

    async def find_or_create(self, lead: Lead) -> tuple[str, bool]:
        """(contact id, whether it was created)."""
        f = lead.fields
        if f.contact_id:
            return f.contact_id, False
        if f.email and (existing := await self.by_email(f.email)) is not None:
            return existing, False
        contact = contacts_pb2.Contact(
            first_name=f.first_name,
            last_name=f.last_name,
            emails=[f.email] if f.email else [],
            phones=[f.phone] if f.phone else [],
            owner_id=f.owner_id,
        )
        try:
            made = await self._callee.call(
                self._stub.CreateContact,
                contacts_pb2.CreateContactRequest(contact=contact),
                idempotency_key=f"lead-convert:{lead.meta.id}",
            )
        except ServiceError as err:
            # Someone created a contact with this address since we looked: that one it is.
            if err.code is grpc.StatusCode.ALREADY_EXISTS and f.email:
                existing = await self.by_email(f.email)
                if existing is not None:
                    return existing, False
            raise
        return made.id, True


async def convert(
    pool: db.Pool,
    contacts: Contacts,
    ident: Identity,
    lead_id: str,
    deal_draft: DealFields | None,
    etag: str,
    now: datetime,
) -> Converted:
    tenant_id = ident.tenant_id
    known = known_id("lead", lead_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await leads.select(conn, tenant_id, known, "FOR NO KEY UPDATE OF l")
        check_etag("lead", current.meta.etag, etag)
        _refuse(current)
        draft = deal_for(current, deal_draft) if deal_draft is not None else None
        if draft is not None:
            await deals.check(conn, tenant_id, draft, now)
        contact_id, created = await contacts.find_or_create(current)
        await link(conn, tenant_id, "contact_summaries", contact_id, "lead.contact_id")
        deal = None
        if draft is not None:
            deal = await deals.insert(
                conn, ident, replace(draft, contact_id=contact_id), now, lead_id=known
            )
        await conn.execute(
            "UPDATE leads SET status = 'converted', contact_id = %s, converted_deal_id = %s,"
            " convert_time = %s, version = version + 1, etag = new_etag(), update_time = %s"
            " WHERE tenant_id = %s AND id = %s",
            (contact_id, deal.meta.id if deal else None, now, now, tenant_id, known),
        )
        await leads.rescore(conn, tenant_id, [known], now, "lead")
        lead = await leads.select(conn, tenant_id, known)
        message = events_pb2.LeadConverted(
            metadata=metadata(ident, now),
            lead=mapping.lead_to_proto(lead),
            contact_id=contact_id,
            deal_id=deal.meta.id if deal else "",
        )
        await event(conn, tenant_id, lead.meta, message)
    metrics.converted(created)
    return Converted(lead, contact_id, created, deal)
