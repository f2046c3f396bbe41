"""Protobuf <-> domain mapping: every enum value has its twin, records survive the trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import struct_pb2

from crm.contacts.v1 import contacts_pb2
from crmkit.errors import Invalid
from trellis_contacts import mapping
from trellis_contacts.domain import (
    CompanyFields,
    ContactFields,
    FieldDefinition,
    FieldType,
    LifecycleStage,
    ObjectType,
    Record,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_every_lifecycle_stage_maps_both_ways() -> None:
    numbers = [v.number for v in contacts_pb2.LifecycleStage.DESCRIPTOR.values if v.number]
    stages = {mapping.stage_from_proto(n, "s") for n in numbers}  # type: ignore[arg-type]
    assert stages == set(LifecycleStage)
    assert mapping.stage_from_proto(contacts_pb2.LIFECYCLE_STAGE_UNSPECIFIED, "s") is None


def test_an_unknown_lifecycle_number_is_invalid() -> None:
    with pytest.raises(Invalid) as exc:
        mapping.stage_from_proto(99, "contact.lifecycle_stage")  # type: ignore[arg-type]
    assert exc.value.violations[0][0] == "contact.lifecycle_stage"


def test_contacts_survive_the_round_trip() -> None:
    fields = ContactFields(
        first_name="Ada",
        last_name="Lovelace",
        emails=("Ada@Example.com",),
        phones=("+14155550100",),
        company_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        owner_id="u1",
        tags=("vip",),
        lifecycle_stage=LifecycleStage.MARKETING_QUALIFIED_LEAD,
        custom_fields={"tier": "gold", "score": 2.5, "vip": True},
    )
    msg = mapping.contact_to_proto(Record("id1", fields, 3, "e", NOW, NOW))
    assert msg.lifecycle_stage == contacts_pb2.LIFECYCLE_STAGE_MARKETING_QUALIFIED_LEAD
    assert (msg.id, msg.version, msg.etag) == ("id1", 3, "e")
    assert msg.update_time.ToDatetime(UTC) == NOW
    assert mapping.contact_draft(msg) == fields


def test_companies_survive_the_round_trip() -> None:
    fields = CompanyFields(
        name="Acme", domain="acme.com", industry="tools", size=5, custom_fields={"x": "y"}
    )
    msg = mapping.company_to_proto(Record("c1", fields, 1, "e", NOW, NOW))
    assert mapping.company_draft(msg) == fields


def test_null_and_empty_values_read_as_none() -> None:
    msg = contacts_pb2.Contact(
        custom_fields={
            "a": struct_pb2.Value(null_value=struct_pb2.NULL_VALUE),
            "b": struct_pb2.Value(),
        }
    )
    assert mapping.contact_draft(msg).custom_fields == {"a": None, "b": None}


def test_odd_values_reach_the_domain_instead_of_failing() -> None:
    msg = contacts_pb2.Contact(
        custom_fields={
            "n": struct_pb2.Value(number_value=float("inf")),
            "l": struct_pb2.Value(list_value=struct_pb2.ListValue()),
        }
    )
    values = mapping.contact_draft(msg).custom_fields
    assert values["n"] == float("inf")
    assert isinstance(values["l"], struct_pb2.ListValue)


def test_field_definitions_map_both_ways() -> None:
    for object_type in ObjectType:
        for field_type in FieldType:
            definition = FieldDefinition(
                object_type,
                "x",
                field_type,
                ("a",) if field_type is FieldType.ENUM else (),
                "X",
            )
            msg = mapping.field_definition_to_proto(definition)
            assert mapping.field_definition_from_proto(msg) == definition


def test_unspecified_or_unknown_enums_of_a_definition_are_invalid() -> None:
    msg = contacts_pb2.FieldDefinition(name="x", type=42)  # type: ignore[arg-type]
    with pytest.raises(Invalid) as exc:
        mapping.field_definition_from_proto(msg)
    assert [f for f, _ in exc.value.violations] == [
        "field_definition.object_type",
        "field_definition.type",
    ]
