"""Protobuf <-> domain values every service maps the same way: enums by name, timestamps and
custom field values.

Proto enum values carry their type's name as a prefix ("LEAD_STATUS_NEW"); the domain's
members are the rest ("NEW"), so the two map by name and a new value cannot be missed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.internal.containers import MessageMap
from google.protobuf.message import Message

from crmkit.errors import invalid_field

E = TypeVar("E", bound=Enum)
V = TypeVar("V", bound=int)  # a proto enum's ValueType


def enum_from_proto(name_of: Callable[[V], str], number: V, prefix: str, kind: type[E]) -> E | None:
    """The domain member of a proto enum number; None for UNSPECIFIED and unknown numbers."""
    try:
        name = name_of(number).removeprefix(prefix)
    except ValueError:  # proto3 enums are open: any number can arrive
        return None
    return kind.__members__.get(name)


def known_enum(
    name_of: Callable[[V], str], number: V, prefix: str, kind: type[E], path: str
) -> E | None:
    """As enum_from_proto, but a number the enum does not have (not UNSPECIFIED) is the
    caller's error, Invalid at `path`."""
    member = enum_from_proto(name_of, number, prefix, kind)
    if member is None and number != 0:
        raise invalid_field(path, f"unknown value {number}")
    return member


def proto_name(member: Enum | None, prefix: str) -> str:
    return prefix + (member.name if member is not None else "UNSPECIFIED")


def time_from_proto(msg: Message, name: str, path: str = "") -> datetime | None:
    """The time in `msg`'s Timestamp field `name`, None when unset; Invalid at `path` (by
    default the field's name: a request's own field) when it is no time at all."""
    if not msg.HasField(name):
        return None
    sent: timestamp_pb2.Timestamp = getattr(msg, name)
    try:
        return sent.ToDatetime(UTC)
    except (ValueError, OverflowError):  # seconds or nanos outside what a Timestamp may hold
        raise invalid_field(path or name, "not a valid time") from None


def stamp(target: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    """Set `target` to `value`; None leaves it unset."""
    if value is not None:
        target.FromDatetime(value)


def custom_from_proto(values: Mapping[str, struct_pb2.Value]) -> dict[str, object]:
    """Custom values as sent, for the domain to judge.

    Not json_format: it raises on NaN and infinities, which are bad input, not a crash. A
    list or struct stays a message, which no rule accepts; a Value without a kind reads as
    None, as null does: both clear the field.
    """
    out: dict[str, object] = {}
    for name, value in values.items():
        kind = value.WhichOneof("kind")
        out[name] = None if kind in (None, "null_value") else getattr(value, kind)
    return out


def custom_to_proto(values: Mapping[str, Any], target: MessageMap[str, struct_pb2.Value]) -> None:
    for name, value in values.items():
        json_format.ParseDict(value, target[name])
