"""Protobuf <-> domain values: enums by name, timestamps, custom field values."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import Enum

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from crm.contacts.v1 import contacts_pb2
from crmkit import protomap
from crmkit.errors import Invalid


class Stage(Enum):
    LEAD = "lead"
    CUSTOMER = "customer"


PREFIX = "LIFECYCLE_STAGE_"


def test_enums_map_by_name_without_the_prefix() -> None:
    kind = contacts_pb2.LifecycleStage
    lead, unset, unknown = kind.ValueType(2), kind.ValueType(0), kind.ValueType(999)
    assert kind.Name(lead) == "LIFECYCLE_STAGE_LEAD"
    assert protomap.enum_from_proto(kind.Name, lead, PREFIX, Stage) == Stage.LEAD
    assert protomap.enum_from_proto(kind.Name, unset, PREFIX, Stage) is None
    assert protomap.enum_from_proto(kind.Name, unknown, PREFIX, Stage) is None  # open enum
    assert protomap.proto_name(Stage.CUSTOMER, PREFIX) == "LIFECYCLE_STAGE_CUSTOMER"
    assert protomap.proto_name(None, PREFIX) == "LIFECYCLE_STAGE_UNSPECIFIED"


def test_stamp_leaves_none_unset() -> None:
    target = timestamp_pb2.Timestamp()
    protomap.stamp(target, None)
    assert target == timestamp_pb2.Timestamp()
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    protomap.stamp(target, at)
    assert target.ToDatetime(UTC) == at


def test_custom_values_round_trip_and_null_clears() -> None:
    sent = struct_pb2.Struct()
    sent.update({"a": "x", "b": 2.5, "c": True, "d": None})
    sent.fields["e"].CopyFrom(struct_pb2.Value())  # no kind at all
    sent.fields["f"].number_value = math.nan
    values = protomap.custom_from_proto(sent.fields)
    assert {k: v for k, v in values.items() if k != "f"} == {
        "a": "x",
        "b": 2.5,
        "c": True,
        "d": None,
        "e": None,
    }
    assert math.isnan(values["f"])  # type: ignore[arg-type]
    back = struct_pb2.Struct()
    protomap.custom_to_proto({"a": "x", "b": 2.5, "c": True}, back.fields)
    assert dict(back) == {"a": "x", "b": 2.5, "c": True}


def test_a_time_is_none_when_unset_and_invalid_when_out_of_range() -> None:
    unset = contacts_pb2.ListContactsRequest()
    assert protomap.time_from_proto(unset, "updated_after") is None
    at = datetime(2026, 1, 2, tzinfo=UTC)
    sent = contacts_pb2.ListContactsRequest()
    sent.updated_after.FromDatetime(at)
    assert protomap.time_from_proto(sent, "updated_after") == at
    sent.updated_after.seconds = 10**12
    with pytest.raises(Invalid) as exc:
        protomap.time_from_proto(sent, "updated_after", "filter.updated_after")
    assert exc.value.violations == [("filter.updated_after", "not a valid time")]
