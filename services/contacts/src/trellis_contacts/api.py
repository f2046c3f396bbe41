"""The gRPC face of the contacts service: requests -> domain -> store -> replies.

The chassis interceptor has already verified the caller and the RPC's scope, checked the
proto-declared limits, and turns the domain's errors into statuses; each handler is its use
case only.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import db, paging, text, updates
from crmkit.context import caller
from crmkit.errors import invalid_field
from crmkit.ids import filter_id
from crmkit.protomap import time_from_proto
from trellis_contacts import domain, mapping, store
from trellis_contacts.domain import CompanyFields, ContactFields

Ctx = grpc.aio.ServicerContext[Any, Any]

_CONTACT_PATHS = updates.writable_paths(ContactFields)
_COMPANY_PATHS = updates.writable_paths(CompanyFields)


class ContactsApi(contacts_pb2_grpc.ContactsServiceServicer):
    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    # --- contacts -----------------------------------------------------------------------------

    async def CreateContact(
        self, request: contacts_pb2.CreateContactRequest, context: Ctx
    ) -> contacts_pb2.Contact:
        fields = domain.normalize_contact(mapping.contact_draft(request.contact), _CONTACT_PATHS)
        return await store.create_contact(self._pool, caller(), fields)

    async def GetContact(
        self, request: contacts_pb2.GetContactRequest, context: Ctx
    ) -> contacts_pb2.Contact:
        contact = await store.get_contact(self._pool, caller().tenant_id, request.id)
        return mapping.contact_to_proto(contact)

    async def UpdateContact(
        self, request: contacts_pb2.UpdateContactRequest, context: Ctx
    ) -> contacts_pb2.Contact:
        paths = updates.mask_paths(request.update_mask, request.contact, _CONTACT_PATHS)
        draft = mapping.contact_draft(request.contact)
        draft = domain.normalize_contact(draft, updates.top_level(paths))
        contact = await store.update_contact(
            self._pool, caller(), request.id, draft, paths, request.etag
        )
        return mapping.contact_to_proto(contact)

    async def DeleteContact(
        self, request: contacts_pb2.DeleteContactRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await store.delete_contact(self._pool, caller(), request.id, request.etag)
        return empty_pb2.Empty()

    async def ListContacts(
        self, request: contacts_pb2.ListContactsRequest, context: Ctx
    ) -> contacts_pb2.ListContactsResponse:
        size = paging.page_size(request.page_size)
        stage = mapping.stage_from_proto(request.lifecycle_stage, "lifecycle_stage")
        tag = text.filter_text(request.tag, "tag")
        company = filter_id(request.company_id)
        if company is None:
            return contacts_pb2.ListContactsResponse()
        filters = store.ContactFilter(
            tag=tag,
            company_id=company,
            updated_after=time_from_proto(request, "updated_after"),
            lifecycle_stage=stage,
            email=text.filter_text(request.email, "email"),
        )
        fingerprint = dataclasses.asdict(filters)
        after = paging.after_id(request.page_token, fingerprint)
        rows = await store.list_contacts(self._pool, caller().tenant_id, filters, after, size + 1)
        page, token = paging.next_page(
            [mapping.contact_to_proto(c) for c in rows], size, lambda c: [c.id], fingerprint
        )
        return contacts_pb2.ListContactsResponse(contacts=page, next_page_token=token)

    # --- companies ----------------------------------------------------------------------------

    async def CreateCompany(
        self, request: contacts_pb2.CreateCompanyRequest, context: Ctx
    ) -> contacts_pb2.Company:
        fields = domain.normalize_company(mapping.company_draft(request.company), _COMPANY_PATHS)
        return mapping.company_to_proto(await store.create_company(self._pool, caller(), fields))

    async def GetCompany(
        self, request: contacts_pb2.GetCompanyRequest, context: Ctx
    ) -> contacts_pb2.Company:
        company = await store.get_company(self._pool, caller().tenant_id, request.id)
        return mapping.company_to_proto(company)

    async def UpdateCompany(
        self, request: contacts_pb2.UpdateCompanyRequest, context: Ctx
    ) -> contacts_pb2.Company:
        paths = updates.mask_paths(request.update_mask, request.company, _COMPANY_PATHS)
        draft = mapping.company_draft(request.company)
        draft = domain.normalize_company(draft, updates.top_level(paths))
        company = await store.update_company(
            self._pool, caller(), request.id, draft, paths, request.etag
        )
        return mapping.company_to_proto(company)

    async def DeleteCompany(
        self, request: contacts_pb2.DeleteCompanyRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await store.delete_company(self._pool, caller(), request.id, request.etag)
        return empty_pb2.Empty()

    async def ListCompanies(
        self, request: contacts_pb2.ListCompaniesRequest, context: Ctx
    ) -> contacts_pb2.ListCompaniesResponse:
        size = paging.page_size(request.page_size)
        updated_after = time_from_proto(request, "updated_after")
        fingerprint: dict[str, object] = {"updated_after": updated_after}
        after = paging.after_id(request.page_token, fingerprint)
        rows = await store.list_companies(
            self._pool, caller().tenant_id, updated_after, after, size + 1
        )
        page, token = paging.next_page(
            [mapping.company_to_proto(c) for c in rows], size, lambda c: [c.id], fingerprint
        )
        return contacts_pb2.ListCompaniesResponse(companies=page, next_page_token=token)

    # --- consent ------------------------------------------------------------------------------

    async def SetConsent(
        self, request: contacts_pb2.SetConsentRequest, context: Ctx
    ) -> contacts_pb2.Consent:
        msg = request.consent
        fields = domain.new_consent(
            purpose=msg.purpose,
            status=mapping.consent_status_from_proto(msg.status),
            legal_basis=mapping.legal_basis_from_proto(msg.legal_basis),
            source=msg.source,
            time=time_from_proto(msg, "time", "consent.time"),
            now=datetime.now(UTC),
        )
        consent = await store.set_consent(self._pool, caller(), request.contact_id, fields)
        return mapping.consent_to_proto(consent)

    async def ListConsents(
        self, request: contacts_pb2.ListConsentsRequest, context: Ctx
    ) -> contacts_pb2.ListConsentsResponse:
        size = paging.page_size(request.page_size)
        filters: dict[str, object] = {"contact_id": request.contact_id}
        after = paging.decode_page_token(request.page_token, filters, arity=1)
        rows = await store.list_consents(
            self._pool,
            caller().tenant_id,
            request.contact_id,
            str(after[0]) if after is not None else None,
            size + 1,
        )
        page, token = paging.next_page(
            [mapping.consent_to_proto(c) for c in rows], size, lambda c: [c.purpose], filters
        )
        return contacts_pb2.ListConsentsResponse(consents=page, next_page_token=token)

    # --- custom field definitions -------------------------------------------------------------

    async def CreateFieldDefinition(
        self, request: contacts_pb2.CreateFieldDefinitionRequest, context: Ctx
    ) -> contacts_pb2.FieldDefinition:
        definition = mapping.field_definition_from_proto(request.field_definition)
        stored = await store.create_field_definition(self._pool, caller().tenant_id, definition)
        return mapping.field_definition_to_proto(stored)

    async def ListFieldDefinitions(
        self, request: contacts_pb2.ListFieldDefinitionsRequest, context: Ctx
    ) -> contacts_pb2.ListFieldDefinitionsResponse:
        kind = mapping.object_type_from_proto(request.object_type)
        if kind is None and request.object_type:
            raise invalid_field("object_type", "must be CONTACT or COMPANY, or unset")
        found = await store.list_field_definitions(self._pool, caller().tenant_id, kind)
        return contacts_pb2.ListFieldDefinitionsResponse(
            field_definitions=[mapping.field_definition_to_proto(d) for d in found]
        )
