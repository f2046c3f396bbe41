"""Listing: keyset pages newest first without duplicates or gaps, and every filter."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from crm.contacts.v1 import contacts_pb2
from crmkit.errors import violations_of
from trellis_devstack.testing import failure

from .support import Running, Tenant, create_company, create_contact, define_field


async def list_all(
    service: Running, tenant: Tenant, request: contacts_pb2.ListContactsRequest
) -> list[list[str]]:
    """The ids of every page, following next_page_token to the end."""
    pages: list[list[str]] = []
    while True:
        reply = await service.stub.ListContacts(request, metadata=tenant.md())
        pages.append([c.id for c in reply.contacts])
        if not reply.next_page_token:
            return pages
        request.page_token = reply.next_page_token


async def test_pages_cover_everything_once_newest_first(service: Running, tenant: Tenant) -> None:
    ids = [(await create_contact(service, tenant, first_name=f"c{i}")).id for i in range(7)]
    pages = await list_all(service, tenant, contacts_pb2.ListContactsRequest(page_size=3))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == ids[::-1]

    # Exactly a page's worth: the last page is full and says so with an empty token.
    pages = await list_all(service, tenant, contacts_pb2.ListContactsRequest(page_size=7))
    assert [len(p) for p in pages] == [7]

    # The default page size holds them all.
    reply = await service.stub.ListContacts(
        contacts_pb2.ListContactsRequest(), metadata=tenant.md()
    )
    assert len(reply.contacts) == 7
    assert not reply.next_page_token


async def test_paging_sees_rows_written_between_pages_only_once(
    service: Running, tenant: Tenant
) -> None:
    first = [(await create_contact(service, tenant, first_name=f"c{i}")).id for i in range(4)]
    page1 = await service.stub.ListContacts(
        contacts_pb2.ListContactsRequest(page_size=2), metadata=tenant.md()
    )
    await create_contact(service, tenant, first_name="newer")  # sorts before page 1: not seen
    page2 = await service.stub.ListContacts(
        contacts_pb2.ListContactsRequest(page_size=2, page_token=page1.next_page_token),
        metadata=tenant.md(),
    )
    assert [c.id for c in (*page1.contacts, *page2.contacts)] == first[::-1]


async def test_every_contact_filter(service: Running, tenant: Tenant) -> None:
    acme = await create_company(service, tenant, name="Acme")
    other = await create_company(service, tenant, name="Other")
    a = await create_contact(
        service,
        tenant,
        first_name="a",
        tags=["vip", "b2b"],
        company_id=acme.id,
        lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_CUSTOMER,
    )
    b = await create_contact(service, tenant, first_name="b", tags=["vip"], company_id=other.id)
    c = await create_contact(
        service, tenant, first_name="c", lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_CUSTOMER
    )
    # Change `a` after everything else exists: only it was updated after c's last change.
    await service.stub.UpdateContact(
        contacts_pb2.UpdateContactRequest(id=a.id, contact=contacts_pb2.Contact(owner_id="u1")),
        metadata=tenant.md(),
    )

    async def ids(**filters: object) -> list[str]:
        reply = await service.stub.ListContacts(
            contacts_pb2.ListContactsRequest(**filters),  # type: ignore[arg-type]
            metadata=tenant.md(),
        )
        return [x.id for x in reply.contacts]

    assert await ids() == [c.id, b.id, a.id]
    assert await ids(tag="vip") == [b.id, a.id]
    assert await ids(tag="b2b") == [a.id]
    assert await ids(tag="none") == []
    assert await ids(company_id=acme.id) == [a.id]
    assert await ids(company_id=other.id) == [b.id]
    assert await ids(company_id="not-an-id") == []
    assert await ids(lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_CUSTOMER) == [c.id, a.id]
    assert await ids(lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_LEAD) == []
    assert await ids(updated_after=c.update_time) == [a.id]
    assert await ids(updated_after=Timestamp(seconds=0)) == [c.id, b.id, a.id]
    assert await ids(tag="vip", lifecycle_stage=contacts_pb2.LIFECYCLE_STAGE_CUSTOMER) == [a.id]


async def test_filters_hold_across_pages(service: Running, tenant: Tenant) -> None:
    tagged = [
        (await create_contact(service, tenant, first_name=f"t{i}", tags=["t"] if i % 2 else []))
        for i in range(9)
    ]
    pages = await list_all(service, tenant, contacts_pb2.ListContactsRequest(page_size=2, tag="t"))
    assert [i for page in pages for i in page] == [c.id for c in tagged if c.tags][::-1]


async def test_a_page_token_only_fits_its_own_filters(service: Running, tenant: Tenant) -> None:
    for i in range(3):
        await create_contact(service, tenant, first_name=f"c{i}", tags=["t"])
    first = await service.stub.ListContacts(
        contacts_pb2.ListContactsRequest(page_size=1, tag="t"), metadata=tenant.md()
    )
    err = await failure(
        service.stub.ListContacts(
            contacts_pb2.ListContactsRequest(
                page_size=1, tag="u", page_token=first.next_page_token
            ),
            metadata=tenant.md(),
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations_of(err)] == ["page_token"]


async def test_companies_page_and_filter_by_update_time(service: Running, tenant: Tenant) -> None:
    made = [await create_company(service, tenant, name=f"co{i}") for i in range(5)]
    ids: list[str] = []
    request = contacts_pb2.ListCompaniesRequest(page_size=2)
    while True:
        reply = await service.stub.ListCompanies(request, metadata=tenant.md())
        ids += [c.id for c in reply.companies]
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert ids == [c.id for c in made][::-1]

    await service.stub.UpdateCompany(
        contacts_pb2.UpdateCompanyRequest(id=made[1].id, company=contacts_pb2.Company(size=3)),
        metadata=tenant.md(),
    )
    recent = await service.stub.ListCompanies(
        contacts_pb2.ListCompaniesRequest(updated_after=made[-1].update_time),
        metadata=tenant.md(),
    )
    assert [c.id for c in recent.companies] == [made[1].id]


async def test_records_at_their_limits_page_without_exceeding_the_message_size(
    service: Running, tenant: Tenant
) -> None:
    # 100 custom fields of 1,000 four-byte characters each: about 400 kB a contact, within
    # every declared limit; twelve of them are more than a 4 MiB gRPC message.
    names = [f"f{i:03d}" for i in range(100)]
    for name in names:
        await define_field(service, tenant, name, contacts_pb2.FIELD_TYPE_STRING)
    wide = {n: struct_pb2.Value(string_value="\U0001d11e" * 1000) for n in names}
    created = {
        (await create_contact(service, tenant, first_name=f"Wide {i}", custom_fields=wide)).id
        for i in range(12)
    }
    pages = await list_all(service, tenant, contacts_pb2.ListContactsRequest(page_size=50))
    assert len(pages) > 1  # before, one page of all twelve: RESOURCE_EXHAUSTED at the caller
    assert sorted(i for page in pages for i in page) == sorted(created)


async def test_the_email_filter_finds_the_one_contact_case_insensitively(
    service: Running, tenant: Tenant, other_tenant: Tenant
) -> None:
    ada = await create_contact(service, tenant, first_name="Ada", emails=["Ada@Example.com"])
    await create_contact(service, tenant, first_name="Grace", emails=["grace@example.com"])
    await create_contact(service, other_tenant, first_name="Ada", emails=["ada@example.com"])
    pages = await list_all(
        service, tenant, contacts_pb2.ListContactsRequest(email="ADA@example.COM")
    )
    assert pages == [[ada.id]]
    assert await list_all(
        service, tenant, contacts_pb2.ListContactsRequest(email="nobody@example.com")
    ) == [[]]
