"""Input limits declared in the protos (`crm.common.v1.max_length`, `max_items`, `min_value`,
`max_value`), enforced.

The gateway checks a request before forwarding it and each service checks again, both with this
one walker, so a bound lives only in the .proto file.
"""

from __future__ import annotations

from functools import cache

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from crm.common.v1 import options_pb2


@cache
def field_limits(field: FieldDescriptor) -> tuple[int, int]:
    """(max_length, max_items) of a field, 0 meaning unbounded; cached: reading options is slow."""
    opts = field.GetOptions()
    return int(opts.Extensions[options_pb2.max_length]), int(opts.Extensions[options_pb2.max_items])


@cache
def value_range(field: FieldDescriptor) -> tuple[int | None, int | None]:
    """(min_value, max_value) of an integer field; None where the proto sets no bound."""
    opts = field.GetOptions()
    low = (
        opts.Extensions[options_pb2.min_value] if opts.HasExtension(options_pb2.min_value) else None
    )
    high = (
        opts.Extensions[options_pb2.max_value] if opts.HasExtension(options_pb2.max_value) else None
    )
    return low, high


def _out_of_range(value: object, field: FieldDescriptor) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    low, high = value_range(field)
    if low is not None and value < low:
        return f"must be at least {low}"
    if high is not None and value > high:
        return f"must be at most {high}"
    return None


def is_map_field(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and bool(entry.GetOptions().map_entry)


def _walks_into(msg: Message) -> bool:
    # The well-known types (Value, Struct, Timestamp...) carry no limits of ours; Struct and
    # Value can nest deeply, so skipping them keeps the walk proportional to our own fields.
    return not msg.DESCRIPTOR.full_name.startswith("google.protobuf.")


def _too_long(value: str, max_length: int) -> bool:
    return max_length > 0 and len(value) > max_length  # len() counts characters, not bytes


def check_limits(msg: Message, prefix: str = "") -> list[tuple[str, str]]:
    """Every (field_path, message) violating a max_length/max_items option in `msg`, recursively.

    Paths use proto field names: "contact.emails[2]" for a repeated element and
    "contact.custom_fields.tier" for a map entry. An empty list means the message is within bounds.
    """
    out: list[tuple[str, str]] = []
    for field, value in msg.ListFields():
        path = f"{prefix}{field.name}"
        max_length, max_items = field_limits(field)
        if is_map_field(field):
            if max_items and len(value) > max_items:
                out.append((path, f"at most {max_items} entries are allowed"))
            for key, item in value.items():
                entry_path = f"{path}.{key}"
                if isinstance(key, str) and _too_long(key, max_length):
                    out.append((entry_path, f"key longer than {max_length} characters"))
                if isinstance(item, Message) and _walks_into(item):
                    out.extend(check_limits(item, f"{entry_path}."))
        elif field.is_repeated:
            if max_items and len(value) > max_items:
                out.append((path, f"at most {max_items} items are allowed"))
            for i, item in enumerate(value):
                if isinstance(item, str) and _too_long(item, max_length):
                    out.append((f"{path}[{i}]", f"longer than {max_length} characters"))
                elif isinstance(item, Message) and _walks_into(item):
                    out.extend(check_limits(item, f"{path}[{i}]."))
        elif isinstance(value, str):
            if _too_long(value, max_length):
                out.append((path, f"longer than {max_length} characters"))
        elif (problem := _out_of_range(value, field)) is not None:
            out.append((path, problem))
        elif isinstance(value, Message) and _walks_into(value):
            out.extend(check_limits(value, f"{path}."))
    return out
