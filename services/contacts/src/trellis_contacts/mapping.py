"""Protobuf <-> domain values: the api maps requests and replies with it, the store events."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.internal.containers import MessageMap

from crm.contacts.v1 import contacts_pb2
from crmkit.errors import Invalid
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

E = TypeVar("E", bound=Enum)
V = TypeVar("V", bound=int)  # a proto enum's ValueType

# Proto enum values carry their type's name as a prefix ("LIFECYCLE_STAGE_LEAD"); the domain's
# members are the rest ("LEAD"), so the two map by name and a new value cannot be missed.
_STAGE = "LIFECYCLE_STAGE_"
_OBJECT_TYPE = "OBJECT_TYPE_"
_FIELD_TYPE = "FIELD_TYPE_"
_CONSENT_STATUS = "CONSENT_STATUS_"
_LEGAL_BASIS = "LEGAL_BASIS_"


def _from_proto(name_of: Callable[[V], str], number: V, prefix: str, kind: type[E]) -> E | None:
    """The domain member of a proto enum number; None for UNSPECIFIED and unknown numbers."""
    try:
        name = name_of(number).removeprefix(prefix)
    except ValueError:  # proto3 enums are open: any number can arrive
        return None
    return kind.__members__.get(name)


def _proto_name(member: Enum | None, prefix: str) -> str:
    return prefix + (member.name if member is not None else "UNSPECIFIED")


def stage_from_proto(
    number: contacts_pb2.LifecycleStage.ValueType, path: str
) -> LifecycleStage | None:
    stage = _from_proto(contacts_pb2.LifecycleStage.Name, number, _STAGE, LifecycleStage)
    if stage is None and number != 0:
        raise Invalid([(path, f"unknown lifecycle stage {number}")])
    return stage


def _custom_from_proto(values: Mapping[str, struct_pb2.Value]) -> dict[str, object]:
    """Custom values as sent, for the domain to judge against the field definitions.

    Not json_format: it raises on NaN and infinities, which are bad input, not a crash. A
    list or struct stays a message, which no field type accepts; a Value without a kind
    reads as None, as null does: both clear the field.
    """
    out: dict[str, object] = {}
    for name, value in values.items():
        kind = value.WhichOneof("kind")
        out[name] = None if kind in (None, "null_value") else getattr(value, kind)
    return out


def _custom_to_proto(values: Mapping[str, Any], target: MessageMap[str, struct_pb2.Value]) -> None:
    for name, value in values.items():
        json_format.ParseDict(value, target[name])


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
        custom_fields=_custom_from_proto(msg.custom_fields),
    )


def company_draft(msg: contacts_pb2.Company) -> CompanyFields:
    """The writable fields of a company as sent, not yet normalised."""
    return CompanyFields(
        name=msg.name,
        domain=msg.domain,
        industry=msg.industry,
        size=msg.size,
        custom_fields=_custom_from_proto(msg.custom_fields),
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
        lifecycle_stage=contacts_pb2.LifecycleStage.Value(_proto_name(f.lifecycle_stage, _STAGE)),
        version=contact.version,
        etag=contact.etag,
    )
    msg.create_time.FromDatetime(contact.create_time)
    msg.update_time.FromDatetime(contact.update_time)
    _custom_to_proto(f.custom_fields, msg.custom_fields)
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
    _custom_to_proto(f.custom_fields, msg.custom_fields)
    return msg


def field_definition_from_proto(msg: contacts_pb2.FieldDefinition) -> FieldDefinition:
    """A validated definition; raises Invalid naming every bad field."""
    return new_field_definition(
        object_type=object_type_from_proto(msg.object_type),
        name=msg.name,
        type_=_from_proto(contacts_pb2.FieldType.Name, msg.type, _FIELD_TYPE, FieldType),
        options=tuple(msg.options),
        label=msg.label,
    )


def object_type_from_proto(number: contacts_pb2.ObjectType.ValueType) -> ObjectType | None:
    return _from_proto(contacts_pb2.ObjectType.Name, number, _OBJECT_TYPE, ObjectType)


def field_definition_to_proto(definition: FieldDefinition) -> contacts_pb2.FieldDefinition:
    return contacts_pb2.FieldDefinition(
        object_type=contacts_pb2.ObjectType.Value(
            _proto_name(definition.object_type, _OBJECT_TYPE)
        ),
        name=definition.name,
        type=contacts_pb2.FieldType.Value(_proto_name(definition.type, _FIELD_TYPE)),
        options=definition.options,
        label=definition.label,
    )


def consent_status_from_proto(number: contacts_pb2.ConsentStatus.ValueType) -> ConsentStatus | None:
    return _from_proto(contacts_pb2.ConsentStatus.Name, number, _CONSENT_STATUS, ConsentStatus)


def legal_basis_from_proto(number: contacts_pb2.LegalBasis.ValueType) -> LegalBasis | None:
    return _from_proto(contacts_pb2.LegalBasis.Name, number, _LEGAL_BASIS, LegalBasis)


def consent_to_proto(consent: Consent) -> contacts_pb2.Consent:
    f = consent.fields
    msg = contacts_pb2.Consent(
        id=consent.id,
        contact_id=consent.contact_id,
        purpose=f.purpose,
        status=contacts_pb2.ConsentStatus.Value(_proto_name(f.status, _CONSENT_STATUS)),
        legal_basis=contacts_pb2.LegalBasis.Value(_proto_name(f.legal_basis, _LEGAL_BASIS)),
        source=f.source,
        version=consent.version,
    )
    msg.time.FromDatetime(f.time)
    msg.update_time.FromDatetime(consent.update_time)
    return msg
