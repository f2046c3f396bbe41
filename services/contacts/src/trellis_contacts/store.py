"""SQL of the contacts service: one transaction per use case, its events written inside it.

Every function opens a tenant transaction (crmkit.db.tenant_tx), so row-level security scopes
each statement to the caller's tenant even where a WHERE clause would not; the explicit
`tenant_id = ...` predicates are there for the planner (the indexes lead with tenant_id).
Rules come from the domain module; what needs the database (the current record, the tenant's
custom field definitions, email uniqueness, company existence) is decided here, under the
row locks of the same transaction, so concurrent requests cannot slip between check and write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from psycopg import sql
from psycopg.types.json import Jsonb

from crm.common.v1 import common_pb2
from crm.contacts.v1 import contacts_pb2, events_pb2
from crmkit import db, outbox, updates
from crmkit.context import Identity
from crmkit.errors import Duplicate, Invalid, NotFound, check_etag
from crmkit.ids import known_id, new_id
from trellis_contacts import domain, mapping
from trellis_contacts.domain import (
    Company,
    CompanyFields,
    Consent,
    ConsentFields,
    ConsentStatus,
    Contact,
    ContactFields,
    F,
    FieldDefinition,
    FieldType,
    LegalBasis,
    LifecycleStage,
    ObjectType,
    Record,
)

_CONTACT_COLUMNS = sql.SQL(
    "id, first_name, last_name, emails, phones, company_id, owner_id, tags, lifecycle_stage,"
    " custom_fields, version, etag, create_time, update_time"
)
_COMPANY_COLUMNS = sql.SQL(
    "id, name, domain, industry, size, custom_fields, version, etag, create_time, update_time"
)


@dataclass(frozen=True)
class ContactFilter:
    """ListContacts' filters, combined with AND; empty values do not filter."""

    tag: str = ""
    company_id: str = ""
    updated_after: datetime | None = None
    lifecycle_stage: LifecycleStage | None = None
    email: str = ""


# --- rows <-> records -------------------------------------------------------------------------


def _record(row: dict[str, Any], fields: F) -> Record[F]:
    return Record(
        id=str(row["id"]),
        fields=fields,
        version=row["version"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _contact(row: dict[str, Any]) -> Contact:
    stage = row["lifecycle_stage"]
    fields = ContactFields(
        first_name=row["first_name"],
        last_name=row["last_name"],
        emails=tuple(row["emails"]),
        phones=tuple(row["phones"]),
        company_id=str(row["company_id"] or ""),
        owner_id=row["owner_id"],
        tags=tuple(row["tags"]),
        lifecycle_stage=LifecycleStage(stage) if stage else None,
        custom_fields=row["custom_fields"],
    )
    return _record(row, fields)


def _company(row: dict[str, Any]) -> Company:
    fields = CompanyFields(
        name=row["name"],
        domain=row["domain"],
        industry=row["industry"],
        size=row["size"],
        custom_fields=row["custom_fields"],
    )
    return _record(row, fields)


def _contact_params(f: ContactFields) -> dict[str, Any]:
    return {
        "first_name": f.first_name,
        "last_name": f.last_name,
        "emails": list(f.emails),
        "phones": list(f.phones),
        "company_id": f.company_id or None,
        "owner_id": f.owner_id,
        "tags": list(f.tags),
        "lifecycle_stage": f.lifecycle_stage.value if f.lifecycle_stage else None,
        "custom_fields": Jsonb(dict(f.custom_fields)),
    }


def _company_params(f: CompanyFields) -> dict[str, Any]:
    return {
        "name": f.name,
        "domain": f.domain,
        "industry": f.industry,
        "size": f.size,
        "custom_fields": Jsonb(dict(f.custom_fields)),
    }


# --- shared steps -----------------------------------------------------------------------------


async def _definitions(conn: db.Conn, tenant_id: str, kind: ObjectType) -> list[FieldDefinition]:
    rows = await db.fetch_all(
        conn,
        sql.SQL(
            "SELECT object_type, name, type, options, label FROM field_definitions"
            " WHERE tenant_id = %s AND object_type = %s ORDER BY name"
        ),
        (tenant_id, kind.value),
    )
    return [_definition(r) for r in rows]


def _definition(row: dict[str, Any]) -> FieldDefinition:
    return FieldDefinition(
        object_type=ObjectType(row["object_type"]),
        name=row["name"],
        type=FieldType(row["type"]),
        options=tuple(row["options"]),
        label=row["label"],
    )


async def _definitions_for(
    conn: db.Conn, tenant_id: str, kind: ObjectType, values: Mapping[str, object]
) -> list[FieldDefinition]:
    # Only a record that carries custom fields needs the definitions read.
    return await _definitions(conn, tenant_id, kind) if values else []


def _metadata(ident: Identity, at: datetime) -> common_pb2.EventMetadata:
    # event_id stays empty: write_event makes the id and sends it as the CloudEvents ce-id.
    meta = common_pb2.EventMetadata(tenant_id=ident.tenant_id, actor=ident.principal)
    meta.occurred_at.FromDatetime(at)
    return meta


async def _event(
    conn: db.Conn, ident: Identity, record_id: str, version: int, message: Message
) -> None:
    await outbox.write_event(
        conn, message, tenant_id=ident.tenant_id, record_id=record_id, record_version=version
    )


async def _lock_company(conn: db.Conn, tenant_id: str, company_id: str) -> None:
    """Check that a contact's company exists and keep it so until the commit.

    KEY SHARE is what the foreign key check would take anyway; taking it first, before any
    contact row, keeps the lock order of a company's deletion (company, then its contacts),
    so the two cannot deadlock. A missing company is the caller's mistake, not a 500.
    """
    row = await db.fetch_one(
        conn,
        "SELECT 1 AS found FROM companies WHERE tenant_id = %s AND id = %s FOR KEY SHARE",
        (tenant_id, company_id),
    )
    if row is None:
        raise Invalid([("contact.company_id", "no such company")])


# --- contacts ---------------------------------------------------------------------------------

_INSERT_CONTACT = sql.SQL("""
INSERT INTO contacts (tenant_id, id, first_name, last_name, emails, phones, company_id, owner_id,
                      tags, lifecycle_stage, custom_fields)
VALUES (%(tenant_id)s, %(id)s, %(first_name)s, %(last_name)s, %(emails)s, %(phones)s,
        %(company_id)s, %(owner_id)s, %(tags)s, %(lifecycle_stage)s, %(custom_fields)s)
RETURNING {columns}
""").format(columns=_CONTACT_COLUMNS)

_UPDATE_CONTACT = sql.SQL("""
UPDATE contacts SET first_name = %(first_name)s, last_name = %(last_name)s, emails = %(emails)s,
    phones = %(phones)s, company_id = %(company_id)s, owner_id = %(owner_id)s, tags = %(tags)s,
    lifecycle_stage = %(lifecycle_stage)s, custom_fields = %(custom_fields)s,
    version = version + 1, etag = new_etag(), update_time = now()
WHERE tenant_id = %(tenant_id)s AND id = %(id)s
RETURNING {columns}
""").format(columns=_CONTACT_COLUMNS)

# Sorted, so two writers claiming overlapping addresses take the index locks in the same
# order and wait for each other instead of deadlocking.
_CLAIM_EMAILS = sql.SQL("""
INSERT INTO contact_emails (tenant_id, email_key, contact_id)
SELECT %(tenant_id)s, k, %(id)s FROM unnest(%(keys)s::text[]) AS k ORDER BY k
ON CONFLICT DO NOTHING
RETURNING email_key
""")


async def _select_contact(conn: db.Conn, tenant_id: str, record_id: str, lock: str = "") -> Contact:
    row = await db.fetch_one(
        conn,
        sql.SQL("SELECT {columns} FROM contacts WHERE tenant_id = %s AND id = %s {lock}").format(
            columns=_CONTACT_COLUMNS, lock=sql.SQL(lock)
        ),
        (tenant_id, record_id),
    )
    if row is None:
        raise NotFound("contact", record_id)
    return _contact(row)


async def _claim_emails(conn: db.Conn, tenant_id: str, contact: Contact) -> None:
    """Make the contact's addresses its own, or raise Duplicate naming the current owner.

    ON CONFLICT DO NOTHING waits for a concurrent writer of the same address and skips it if
    that writer commits; the look-up that follows then sees the winner. No exception, so no
    aborted transaction and never a 500.
    """
    emails = contact.fields.emails
    keys = [domain.email_key(e) for e in emails]
    if not keys:
        return
    rows = await db.fetch_all(
        conn, _CLAIM_EMAILS, {"tenant_id": tenant_id, "id": contact.id, "keys": keys}
    )
    claimed = {r["email_key"] for r in rows}
    for i, key in enumerate(keys):
        if key in claimed:
            continue
        owner = await db.fetch_one(
            conn,
            "SELECT contact_id FROM contact_emails WHERE tenant_id = %s AND email_key = %s",
            (tenant_id, key),
        )
        holder = f"contact {owner['contact_id']}" if owner else "another contact"
        raise Duplicate(
            f"{emails[i]} is already an email address of {holder}", f"contact.emails[{i}]"
        )


async def create_contact(
    pool: db.Pool, ident: Identity, draft: ContactFields
) -> contacts_pb2.Contact:
    """Store a new contact (draft already normalised) and its contact.created event; the
    contact as the event carries it, which is also the reply (converted once)."""
    tenant_id = ident.tenant_id
    async with db.tenant_tx(pool, tenant_id) as conn:
        if draft.company_id:
            await _lock_company(conn, tenant_id, draft.company_id)
        defs = await _definitions_for(conn, tenant_id, ObjectType.CONTACT, draft.custom_fields)
        fields = domain.finish_contact(draft, defs)
        params = {"tenant_id": tenant_id, "id": new_id(), **_contact_params(fields)}
        row = await db.fetch_one(conn, _INSERT_CONTACT, params)
        assert row is not None  # INSERT ... RETURNING returns the row
        contact = _contact(row)
        await _claim_emails(conn, tenant_id, contact)
        shown = mapping.contact_to_proto(contact)
        event = events_pb2.ContactCreated(
            metadata=_metadata(ident, contact.update_time), contact=shown
        )
        await _event(conn, ident, contact.id, contact.version, event)
        return shown


_GET_CONTACT = sql.SQL("SELECT {columns} FROM contacts WHERE tenant_id = %s AND id = %s").format(
    columns=_CONTACT_COLUMNS
)


async def get_contact(pool: db.Pool, tenant_id: str, record_id: str) -> Contact:
    known = known_id("contact", record_id)
    rows = await db.tenant_read(pool, tenant_id, _GET_CONTACT, (tenant_id, known))
    if not rows:
        raise NotFound("contact", record_id)
    return _contact(rows[0])


async def update_contact(
    pool: db.Pool,
    ident: Identity,
    record_id: str,
    draft: ContactFields,
    paths: Sequence[str],
    etag: str,
) -> Contact:
    """Apply the masked fields of `draft`; a change that changes nothing writes nothing."""
    tenant_id = ident.tenant_id
    known = known_id("contact", record_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        if "company_id" in paths and draft.company_id:
            await _lock_company(conn, tenant_id, draft.company_id)
        # NO KEY UPDATE: enough to serialise writers of this contact, and it does not block
        # the key-share locks of foreign keys pointing at it.
        current = await _select_contact(conn, tenant_id, known, "FOR NO KEY UPDATE")
        check_etag("contact", current.etag, etag)
        merged = updates.merge(current.fields, draft, paths)
        defs = await _definitions_for(conn, tenant_id, ObjectType.CONTACT, merged.custom_fields)
        fields = domain.finish_contact(merged, defs)
        changed = updates.changed_fields(current.fields, fields)
        if not changed:
            return current
        row = await db.fetch_one(
            conn, _UPDATE_CONTACT, {"tenant_id": tenant_id, "id": known, **_contact_params(fields)}
        )
        assert row is not None  # the row is locked: it is still there
        contact = _contact(row)
        if "emails" in changed:
            await conn.execute(
                "DELETE FROM contact_emails WHERE tenant_id = %s AND contact_id = %s",
                (tenant_id, known),
            )
            await _claim_emails(conn, tenant_id, contact)
        event = events_pb2.ContactUpdated(
            metadata=_metadata(ident, contact.update_time),
            contact=mapping.contact_to_proto(contact),
            changed_fields=changed,
        )
        await _event(conn, ident, contact.id, contact.version, event)
        return contact


async def delete_contact(pool: db.Pool, ident: Identity, record_id: str, etag: str) -> None:
    tenant_id = ident.tenant_id
    known = known_id("contact", record_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select_contact(conn, tenant_id, known, "FOR UPDATE")
        check_etag("contact", current.etag, etag)
        # contact_emails rows go with it (ON DELETE CASCADE).
        row = await db.fetch_one(
            conn,
            "DELETE FROM contacts WHERE tenant_id = %s AND id = %s RETURNING now() AS at",
            (tenant_id, known),
        )
        assert row is not None
        event = events_pb2.ContactDeleted(
            metadata=_metadata(ident, row["at"]), id=known, version=current.version + 1
        )
        await _event(conn, ident, known, event.version, event)


async def list_contacts(
    pool: db.Pool, tenant_id: str, filters: ContactFilter, after: str | None, limit: int
) -> list[Contact]:
    """Up to `limit` contacts, newest first, after the id `after` (keyset paging)."""
    where = [sql.SQL("tenant_id = %(tenant_id)s")]
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if after is not None:
        where.append(sql.SQL("id < %(after)s"))
        params["after"] = after
    if filters.tag:
        where.append(sql.SQL("tags @> ARRAY[%(tag)s]::text[]"))
        params["tag"] = filters.tag
    if filters.company_id:
        where.append(sql.SQL("company_id = %(company_id)s"))
        params["company_id"] = filters.company_id
    if filters.updated_after is not None:
        where.append(sql.SQL("update_time > %(updated_after)s"))
        params["updated_after"] = filters.updated_after
    if filters.lifecycle_stage is not None:
        where.append(sql.SQL("lifecycle_stage = %(stage)s"))
        params["stage"] = filters.lifecycle_stage.value
    if filters.email:
        where.append(
            sql.SQL(
                "id IN (SELECT contact_id FROM contact_emails"
                " WHERE tenant_id = %(tenant_id)s AND email_key = %(email_key)s)"
            )
        )
        params["email_key"] = domain.email_key(filters.email)
    query = sql.SQL(
        "SELECT {columns} FROM contacts WHERE {where} ORDER BY id DESC LIMIT %(limit)s"
    ).format(columns=_CONTACT_COLUMNS, where=sql.SQL(" AND ").join(where))
    async with db.tenant_tx(pool, tenant_id) as conn:
        return [_contact(r) for r in await db.fetch_all(conn, query, params)]


# --- companies --------------------------------------------------------------------------------

_INSERT_COMPANY = sql.SQL("""
INSERT INTO companies (tenant_id, id, name, domain, industry, size, custom_fields)
VALUES (%(tenant_id)s, %(id)s, %(name)s, %(domain)s, %(industry)s, %(size)s, %(custom_fields)s)
RETURNING {columns}
""").format(columns=_COMPANY_COLUMNS)

_UPDATE_COMPANY = sql.SQL("""
UPDATE companies SET name = %(name)s, domain = %(domain)s, industry = %(industry)s,
    size = %(size)s, custom_fields = %(custom_fields)s,
    version = version + 1, etag = new_etag(), update_time = now()
WHERE tenant_id = %(tenant_id)s AND id = %(id)s
RETURNING {columns}
""").format(columns=_COMPANY_COLUMNS)

# A deleted company's contacts lose their company_id as ordinary changes: a new version and
# etag each, so their contact.updated events order correctly after earlier ones.
_DETACH_CONTACTS = sql.SQL("""
UPDATE contacts SET company_id = NULL, version = version + 1, etag = new_etag(), update_time = now()
WHERE tenant_id = %s AND company_id = %s
RETURNING {columns}
""").format(columns=_CONTACT_COLUMNS)


async def _select_company(conn: db.Conn, tenant_id: str, record_id: str, lock: str = "") -> Company:
    row = await db.fetch_one(
        conn,
        sql.SQL("SELECT {columns} FROM companies WHERE tenant_id = %s AND id = %s {lock}").format(
            columns=_COMPANY_COLUMNS, lock=sql.SQL(lock)
        ),
        (tenant_id, record_id),
    )
    if row is None:
        raise NotFound("company", record_id)
    return _company(row)


async def create_company(pool: db.Pool, ident: Identity, draft: CompanyFields) -> Company:
    tenant_id = ident.tenant_id
    async with db.tenant_tx(pool, tenant_id) as conn:
        defs = await _definitions_for(conn, tenant_id, ObjectType.COMPANY, draft.custom_fields)
        fields = domain.finish_company(draft, defs)
        params = {"tenant_id": tenant_id, "id": new_id(), **_company_params(fields)}
        row = await db.fetch_one(conn, _INSERT_COMPANY, params)
        assert row is not None
        company = _company(row)
        event = events_pb2.CompanyCreated(
            metadata=_metadata(ident, company.update_time),
            company=mapping.company_to_proto(company),
        )
        await _event(conn, ident, company.id, company.version, event)
        return company


async def get_company(pool: db.Pool, tenant_id: str, record_id: str) -> Company:
    known = known_id("company", record_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        return await _select_company(conn, tenant_id, known)


async def update_company(
    pool: db.Pool,
    ident: Identity,
    record_id: str,
    draft: CompanyFields,
    paths: Sequence[str],
    etag: str,
) -> Company:
    tenant_id = ident.tenant_id
    known = known_id("company", record_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        current = await _select_company(conn, tenant_id, known, "FOR NO KEY UPDATE")
        check_etag("company", current.etag, etag)
        merged = updates.merge(current.fields, draft, paths)
        defs = await _definitions_for(conn, tenant_id, ObjectType.COMPANY, merged.custom_fields)
        fields = domain.finish_company(merged, defs)
        changed = updates.changed_fields(current.fields, fields)
        if not changed:
            return current
        row = await db.fetch_one(
            conn, _UPDATE_COMPANY, {"tenant_id": tenant_id, "id": known, **_company_params(fields)}
        )
        assert row is not None
        company = _company(row)
        event = events_pb2.CompanyUpdated(
            metadata=_metadata(ident, company.update_time),
            company=mapping.company_to_proto(company),
            changed_fields=changed,
        )
        await _event(conn, ident, company.id, company.version, event)
        return company


async def delete_company(pool: db.Pool, ident: Identity, record_id: str, etag: str) -> None:
    """Delete a company; its contacts stay, without a company (each a contact.updated)."""
    tenant_id = ident.tenant_id
    known = known_id("company", record_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        # FOR UPDATE conflicts with the key-share lock a contact's foreign key check takes, so
        # a contact being linked to this company concurrently either commits first (and is
        # detached below) or waits and then fails its check (no such company).
        current = await _select_company(conn, tenant_id, known, "FOR UPDATE")
        check_etag("company", current.etag, etag)
        for detached in await db.fetch_all(conn, _DETACH_CONTACTS, (tenant_id, known)):
            contact = _contact(detached)
            event = events_pb2.ContactUpdated(
                metadata=_metadata(ident, contact.update_time),
                contact=mapping.contact_to_proto(contact),
                changed_fields=["company_id"],
            )
            await _event(conn, ident, contact.id, contact.version, event)
        row = await db.fetch_one(
            conn,
            "DELETE FROM companies WHERE tenant_id = %s AND id = %s RETURNING now() AS at",
            (tenant_id, known),
        )
        assert row is not None
        deleted = events_pb2.CompanyDeleted(
            metadata=_metadata(ident, row["at"]), id=known, version=current.version + 1
        )
        await _event(conn, ident, known, deleted.version, deleted)


async def list_companies(
    pool: db.Pool,
    tenant_id: str,
    updated_after: datetime | None,
    after: str | None,
    limit: int,
) -> list[Company]:
    where = [sql.SQL("tenant_id = %(tenant_id)s")]
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
    if after is not None:
        where.append(sql.SQL("id < %(after)s"))
        params["after"] = after
    if updated_after is not None:
        where.append(sql.SQL("update_time > %(updated_after)s"))
        params["updated_after"] = updated_after
    query = sql.SQL(
        "SELECT {columns} FROM companies WHERE {where} ORDER BY id DESC LIMIT %(limit)s"
    ).format(columns=_COMPANY_COLUMNS, where=sql.SQL(" AND ").join(where))
    async with db.tenant_tx(pool, tenant_id) as conn:
        return [_company(r) for r in await db.fetch_all(conn, query, params)]


# --- field definitions ------------------------------------------------------------------------


async def create_field_definition(
    pool: db.Pool, tenant_id: str, definition: FieldDefinition
) -> FieldDefinition:
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await db.fetch_one(
            conn,
            """
            INSERT INTO field_definitions (tenant_id, object_type, name, type, options, label)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT DO NOTHING
            RETURNING object_type, name, type, options, label
            """,
            (
                tenant_id,
                definition.object_type.value,
                definition.name,
                definition.type.value,
                list(definition.options),
                definition.label,
            ),
        )
    if row is None:
        raise Duplicate(
            f"a {definition.object_type} field named {definition.name} already exists",
            "field_definition.name",
        )
    return _definition(row)


async def list_field_definitions(
    pool: db.Pool, tenant_id: str, kind: ObjectType | None
) -> list[FieldDefinition]:
    async with db.tenant_tx(pool, tenant_id) as conn:
        if kind is not None:
            return await _definitions(conn, tenant_id, kind)
        rows = await db.fetch_all(
            conn,
            "SELECT object_type, name, type, options, label FROM field_definitions"
            " WHERE tenant_id = %s ORDER BY object_type, name",
            (tenant_id,),
        )
        return [_definition(r) for r in rows]


# --- consent ----------------------------------------------------------------------------------

_CONSENT_COLUMNS = sql.SQL(
    "id, contact_id, purpose, status, legal_basis, source, consent_time, version, update_time"
)

# One row per contact and purpose. A change of anything recorded makes a new version; the
# same values again change nothing (no row comes back, so no event either).
_SET_CONSENT = sql.SQL("""
INSERT INTO consents (tenant_id, id, contact_id, purpose, status, legal_basis, source,
                      consent_time)
VALUES (%(tenant_id)s, %(id)s, %(contact_id)s, %(purpose)s, %(status)s, %(legal_basis)s,
        %(source)s, %(time)s)
ON CONFLICT (tenant_id, contact_id, purpose) DO UPDATE
SET status = EXCLUDED.status, legal_basis = EXCLUDED.legal_basis, source = EXCLUDED.source,
    consent_time = EXCLUDED.consent_time, version = consents.version + 1, update_time = now()
WHERE (consents.status, consents.legal_basis, consents.source, consents.consent_time)
      IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.legal_basis, EXCLUDED.source,
                        EXCLUDED.consent_time)
RETURNING {columns}
""").format(columns=_CONSENT_COLUMNS)


def _consent(row: dict[str, Any]) -> Consent:
    basis = row["legal_basis"]
    return Consent(
        id=str(row["id"]),
        contact_id=str(row["contact_id"]),
        fields=ConsentFields(
            purpose=row["purpose"],
            status=ConsentStatus(row["status"]),
            legal_basis=LegalBasis(basis) if basis else None,
            source=row["source"],
            time=row["consent_time"],
        ),
        version=row["version"],
        update_time=row["update_time"],
    )


async def set_consent(
    pool: db.Pool, ident: Identity, contact_id: str, fields: ConsentFields
) -> Consent:
    """Record a consent and its consent.changed event; the same values again write nothing."""
    tenant_id = ident.tenant_id
    known = known_id("contact", contact_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        # KEY SHARE: the contact cannot be deleted under us, and writers of its other fields
        # are not held up.
        await _select_contact(conn, tenant_id, known, "FOR KEY SHARE")
        row = await db.fetch_one(
            conn,
            _SET_CONSENT,
            {
                "tenant_id": tenant_id,
                "id": new_id(),
                "contact_id": known,
                "purpose": fields.purpose,
                "status": fields.status.value,
                "legal_basis": fields.legal_basis.value if fields.legal_basis else "",
                "source": fields.source,
                "time": fields.time,
            },
        )
        if row is None:  # nothing changed
            current = await db.fetch_one(
                conn,
                sql.SQL(
                    "SELECT {columns} FROM consents"
                    " WHERE tenant_id = %s AND contact_id = %s AND purpose = %s"
                ).format(columns=_CONSENT_COLUMNS),
                (tenant_id, known, fields.purpose),
            )
            assert current is not None
            return _consent(current)
        consent = _consent(row)
        event = events_pb2.ConsentChanged(
            metadata=_metadata(ident, consent.update_time),
            consent=mapping.consent_to_proto(consent),
        )
        await _event(conn, ident, consent.id, consent.version, event)
        return consent


async def list_consents(
    pool: db.Pool, tenant_id: str, contact_id: str, after: str | None, limit: int
) -> list[Consent]:
    """Up to `limit` of a contact's consents by purpose, after the purpose `after`."""
    known = known_id("contact", contact_id)
    async with db.tenant_tx(pool, tenant_id) as conn:
        await _select_contact(conn, tenant_id, known)
        rows = await db.fetch_all(
            conn,
            sql.SQL(
                "SELECT {columns} FROM consents WHERE tenant_id = %(tenant_id)s"
                " AND contact_id = %(contact_id)s {after} ORDER BY purpose LIMIT %(limit)s"
            ).format(
                columns=_CONSENT_COLUMNS,
                after=sql.SQL("AND purpose > %(after)s" if after is not None else ""),
            ),
            {"tenant_id": tenant_id, "contact_id": known, "after": after, "limit": limit},
        )
        return [_consent(r) for r in rows]
