"""Protobuf <-> domain values: the api maps requests and replies with it, the store events."""

from __future__ import annotations

from crm.contacts.v1 import contacts_pb2
from crmkit.errors import Invalid
from crmkit.protomap import custom_from_proto, custom_to_proto, enum_from_proto, proto_name
from trellis_contacts.domain import (
    Company,
    CompanyFields,
    Consent,
    ConsentStatus,
    Contact,
    ContactFields,
    FieldDefinition,
    FieldType,
    LegalBasis,
    LifecycleStage,
    ObjectType,
    new_field_definition,
)

_STAGE = "LIFECYCLE_STAGE_"
_OBJECT_TYPE = "OBJECT_TYPE_"
_FIELD_TYPE = "FIELD_TYPE_"
_CONSENT_STATUS = "CONSENT_STATUS_"
_LEGAL_BASIS = "LEGAL_BASIS_"


def stage_from_proto(
    number: contacts_pb2.LifecycleStage.ValueType, path: str
) -> LifecycleStage | None:
    stage = enum_from_proto(contacts_pb2.LifecycleStage.Name, number, _STAGE, LifecycleStage)
    if stage is None and number != 0:
        raise Invalid([(path, f"unknown lifecycle stage {number}")])
    return stage


def contact_draft(msg: contacts_pb2.Contact, path: str = "contact") -> ContactFields:
    """The writable fields of a contact as sent, not yet normalised."""
    return ContactFields(
        first_name=msg.first_name,
        last_name=msg.last_name,
        emails=tuple(msg.emails),
        phones=tuple(msg.phones),
        company_id=msg.company_id,
        owner_id=msg.owner_id,
        tags=tuple(msg.tags),
        lifecycle_stage=stage_from_proto(msg.lifecycle_stage, f"{path}.lifecycle_stage"),
        custom_fields=custom_from_proto(msg.custom_fields),
    )


def company_draft(msg: contacts_pb2.Company) -> CompanyFields:
    """The writable fields of a company as sent, not yet normalised."""
    return CompanyFields(
        name=msg.name,
        domain=msg.domain,
        industry=msg.industry,
        size=msg.size,
        custom_fields=custom_from_proto(msg.custom_fields),
    )


def contact_to_proto(contact: Contact) -> contacts_pb2.Contact:
    f = contact.fields
    msg = contacts_pb2.Contact(
        id=contact.id,
        first_name=f.first_name,
        last_name=f.last_name,
        emails=f.emails,
        phones=f.phones,
        company_id=f.company_id,
        owner_id=f.owner_id,
        tags=f.tags,
        lifecycle_stage=contacts_pb2.LifecycleStage.Value(proto_name(f.lifecycle_stage, _STAGE)),
        version=contact.version,
        etag=contact.etag,
    )
    msg.create_time.FromDatetime(contact.create_time)
    msg.update_time.FromDatetime(contact.update_time)
    custom_to_proto(f.custom_fields, msg.custom_fields)
    return msg


def company_to_proto(company: Company) -> contacts_pb2.Company:
    f = company.fields
    msg = contacts_pb2.Company(
        id=company.id,
        name=f.name,
        domain=f.domain,
        industry=f.industry,
        size=f.size,
        version=company.version,
        etag=company.etag,
    )
    msg.create_time.FromDatetime(company.create_time)
    msg.update_time.FromDatetime(company.update_time)
    custom_to_proto(f.custom_fields, msg.custom_fields)
    return msg


def field_definition_from_proto(msg: contacts_pb2.FieldDefinition) -> FieldDefinition:
    """A validated definition; raises Invalid naming every bad field."""
    return new_field_definition(
        object_type=object_type_from_proto(msg.object_type),
        name=msg.name,
        type_=enum_from_proto(contacts_pb2.FieldType.Name, msg.type, _FIELD_TYPE, FieldType),
        options=tuple(msg.options),
        label=msg.label,
    )


def object_type_from_proto(number: contacts_pb2.ObjectType.ValueType) -> ObjectType | None:
    return enum_from_proto(contacts_pb2.ObjectType.Name, number, _OBJECT_TYPE, ObjectType)


def field_definition_to_proto(definition: FieldDefinition) -> contacts_pb2.FieldDefinition:
    return contacts_pb2.FieldDefinition(
        object_type=contacts_pb2.ObjectType.Value(proto_name(definition.object_type, _OBJECT_TYPE)),
        name=definition.name,
        type=contacts_pb2.FieldType.Value(proto_name(definition.type, _FIELD_TYPE)),
        options=definition.options,
        label=definition.label,
    )


def consent_status_from_proto(number: contacts_pb2.ConsentStatus.ValueType) -> ConsentStatus | None:
    return enum_from_proto(contacts_pb2.ConsentStatus.Name, number, _CONSENT_STATUS, ConsentStatus)


def legal_basis_from_proto(number: contacts_pb2.LegalBasis.ValueType) -> LegalBasis | None:
    return enum_from_proto(contacts_pb2.LegalBasis.Name, number, _LEGAL_BASIS, LegalBasis)


def consent_to_proto(consent: Consent) -> contacts_pb2.Consent:
    f = consent.fields
    msg = contacts_pb2.Consent(
        id=consent.id,
        contact_id=consent.contact_id,
        purpose=f.purpose,
        status=contacts_pb2.ConsentStatus.Value(proto_name(f.status, _CONSENT_STATUS)),
        legal_basis=contacts_pb2.LegalBasis.Value(proto_name(f.legal_basis, _LEGAL_BASIS)),
        source=f.source,
        version=consent.version,
    )
    msg.time.FromDatetime(f.time)
    msg.update_time.FromDatetime(consent.update_time)
    return msg
