"""Bad input: INVALID_ARGUMENT naming the field (BadRequest details), and nothing written."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from crm.contacts.v1 import contacts_pb2
from crmkit import paging
from crmkit.errors import violations_of
from trellis_contacts.store import ContactFilter
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_company, create_contact, define_field

C = contacts_pb2
GOOD_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"  # well-formed, but no such record


@dataclass(frozen=True)
class Existing:
    contact_id: str
    company_id: str


def text(value: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=value)


def number(value: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=value)


def new_contact(**fields: object) -> Callable[[Existing], Message]:
    return lambda _: C.CreateContactRequest(contact=C.Contact(**fields))  # type: ignore[arg-type]


def change_contact(mask: list[str], **fields: object) -> Callable[[Existing], Message]:
    return lambda e: C.UpdateContactRequest(
        id=e.contact_id,
        contact=C.Contact(**fields),  # type: ignore[arg-type]
        update_mask=mask,
    )


# (rpc, request, the field the violation must name)
CASES: dict[str, tuple[str, Callable[[Existing], Message], str]] = {
    "name too long": ("CreateContact", new_contact(first_name="x" * 201), "contact.first_name"),
    "NUL in a name": ("CreateContact", new_contact(first_name="Ada\x00"), "contact.first_name"),
    "NUL in a custom value": (
        "CreateContact",
        new_contact(first_name="A", custom_fields={"note": text("a\x00b")}),
        "contact.custom_fields.note",
    ),
    "too many emails": (
        "CreateContact",
        new_contact(emails=[f"a{i}@example.com" for i in range(11)]),
        "contact.emails",
    ),
    "email too long": (
        "CreateContact",
        new_contact(emails=["a" * 64 + "@" + "b" * 190 + ".com"]),
        "contact.emails[0]",
    ),
    "bad email": ("CreateContact", new_contact(emails=["ada@"]), "contact.emails[0]"),
    "bad phone": (
        "CreateContact",
        new_contact(first_name="A", phones=["+1", "555-0100"]),
        "contact.phones[0]",
    ),
    "too many tags": (
        "CreateContact",
        new_contact(first_name="A", tags=[f"t{i}" for i in range(51)]),
        "contact.tags",
    ),
    "nameless": ("CreateContact", new_contact(phones=["+14155550100"]), "contact"),
    "unknown custom field": (
        "CreateContact",
        new_contact(first_name="A", custom_fields={"nope": text("x")}),
        "contact.custom_fields.nope",
    ),
    "custom field key too long": (
        "CreateContact",
        new_contact(first_name="A", custom_fields={"k" * 65: text("x")}),
        "contact.custom_fields." + "k" * 65,
    ),
    "wrong custom field type": (
        "CreateContact",
        new_contact(first_name="A", custom_fields={"score": text("high")}),
        "contact.custom_fields.score",
    ),
    "NaN for a number": (
        "CreateContact",
        new_contact(first_name="A", custom_fields={"score": number(float("nan"))}),
        "contact.custom_fields.score",
    ),
    "a list for a string": (
        "CreateContact",
        new_contact(
            first_name="A",
            custom_fields={"note": struct_pb2.Value(list_value=struct_pb2.ListValue())},
        ),
        "contact.custom_fields.note",
    ),
    "not an enum option": (
        "CreateContact",
        new_contact(first_name="A", custom_fields={"tier": text("bronze")}),
        "contact.custom_fields.tier",
    ),
    "bad date": (
        "CreateContact",
        new_contact(first_name="A", custom_fields={"since": text("31/12/2024")}),
        "contact.custom_fields.since",
    ),
    "non-UUID company_id": (
        "CreateContact",
        new_contact(first_name="A", company_id="acme"),
        "contact.company_id",
    ),
    "missing company": (
        "CreateContact",
        new_contact(first_name="A", company_id=GOOD_ID),
        "contact.company_id",
    ),
    "unknown lifecycle stage": (
        "CreateContact",
        new_contact(first_name="A", lifecycle_stage=99),
        "contact.lifecycle_stage",
    ),
    "unknown update_mask path": (
        "UpdateContact",
        change_contact(["first_name", "nickname"], first_name="B"),
        "update_mask",
    ),
    "bad email in an update": (
        "UpdateContact",
        change_contact(["emails"], emails=["not an email"]),
        "contact.emails[0]",
    ),
    "update leaving no name": (
        "UpdateContact",
        change_contact(["first_name", "last_name"]),
        "contact",
    ),
    "update to a missing company": (
        "UpdateContact",
        change_contact(["company_id"], company_id=GOOD_ID),
        "contact.company_id",
    ),
    "update with a bad custom value": (
        "UpdateContact",
        change_contact(["custom_fields.score"], custom_fields={"score": text("x")}),
        "contact.custom_fields.score",
    ),
    "too many mask paths": (
        "UpdateContact",
        change_contact(["first_name"] * 21, first_name="B"),
        "update_mask",
    ),
    "bad page_token": (
        "ListContacts",
        lambda _: C.ListContactsRequest(page_token="%%%"),
        "page_token",
    ),
    "forged page_token": (
        "ListContacts",
        # Well-formed, for the right filters, but its key is not an id: still refused.
        lambda _: C.ListContactsRequest(
            page_token=paging.encode_page_token(["x"], dataclasses.asdict(ContactFilter()))
        ),
        "page_token",
    ),
    "time filter out of range": (
        "ListCompanies",
        lambda _: C.ListCompaniesRequest(updated_after=Timestamp(seconds=10**12)),
        "updated_after",
    ),
    "page_size 501": ("ListContacts", lambda _: C.ListContactsRequest(page_size=501), "page_size"),
    "negative page_size": (
        "ListCompanies",
        lambda _: C.ListCompaniesRequest(page_size=-1),
        "page_size",
    ),
    "tag filter too long": ("ListContacts", lambda _: C.ListContactsRequest(tag="t" * 65), "tag"),
    "NUL in the tag filter": ("ListContacts", lambda _: C.ListContactsRequest(tag="\x00"), "tag"),
    "company without a name": (
        "CreateCompany",
        lambda _: C.CreateCompanyRequest(company=C.Company(domain="acme.com")),
        "company.name",
    ),
    "negative company size": (
        "CreateCompany",
        lambda _: C.CreateCompanyRequest(company=C.Company(name="A", size=-5)),
        "company.size",
    ),
    "bad company domain": (
        "UpdateCompany",
        lambda e: C.UpdateCompanyRequest(
            id=e.company_id, company=C.Company(domain="http://acme"), update_mask=["domain"]
        ),
        "company.domain",
    ),
    "company custom field of contacts": (
        "CreateCompany",
        lambda _: C.CreateCompanyRequest(
            company=C.Company(name="A", custom_fields={"score": number(1)})
        ),
        "company.custom_fields.score",
    ),
    "bidi override in a name": (
        "CreateContact",
        lambda _: C.CreateContactRequest(contact=C.Contact(first_name="Ada\u202egnp.exe")),
        "contact.first_name",
    ),
    "invisible-only name": (
        "CreateCompany",
        lambda _: C.CreateCompanyRequest(company=C.Company(name="\u200b\u200d")),
        "company.name",
    ),
    "bad field name": (
        "CreateFieldDefinition",
        lambda _: C.CreateFieldDefinitionRequest(
            field_definition=C.FieldDefinition(
                object_type=C.OBJECT_TYPE_CONTACT, name="Bad Name", type=C.FIELD_TYPE_STRING
            )
        ),
        "field_definition.name",
    ),
    "enum field without options": (
        "CreateFieldDefinition",
        lambda _: C.CreateFieldDefinitionRequest(
            field_definition=C.FieldDefinition(
                object_type=C.OBJECT_TYPE_CONTACT, name="kind", type=C.FIELD_TYPE_ENUM
            )
        ),
        "field_definition.options",
    ),
}


@pytest.fixture
async def existing(service: Running, tenant: Tenant) -> Existing:
    await define_field(service, tenant, "score", C.FIELD_TYPE_NUMBER)
    await define_field(service, tenant, "tier", C.FIELD_TYPE_ENUM, ["gold", "silver"])
    await define_field(service, tenant, "since", C.FIELD_TYPE_DATE)
    await define_field(service, tenant, "note", C.FIELD_TYPE_STRING)
    company = await create_company(service, tenant, name="Acme")
    contact = await create_contact(service, tenant, first_name="Ada", company_id=company.id)
    return Existing(contact.id, company.id)


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input_names_the_field_and_writes_nothing(
    service: Running, tenant: Tenant, existing: Existing, case: str
) -> None:
    rpc, make_request, field = CASES[case]
    tables = ("contacts", "companies", "contact_emails", "field_definitions", "outbox")
    before = [await service.count(t, tenant.id) for t in tables]
    before_contact = await service.stub.GetContact(
        C.GetContactRequest(id=existing.contact_id), metadata=tenant.md()
    )

    call = getattr(service.stub, rpc)
    err = await failure(call(make_request(existing), metadata=tenant.md("admin")))

    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in [f for f, _ in violations_of(err)], violations_of(err)
    assert [await service.count(t, tenant.id) for t in tables] == before
    after_contact = await service.stub.GetContact(
        C.GetContactRequest(id=existing.contact_id), metadata=tenant.md()
    )
    assert after_contact == before_contact
