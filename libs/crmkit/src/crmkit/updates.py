"""Partial updates (AIP-134), the same for every service: which fields an update writes,
merging them into the stored record, and which fields a change changed.

Records are frozen dataclasses of the fields a client may write. A mask path is a field name,
or "<map field>.<key>" for one entry of a map field (custom fields); output-only fields in a
mask are dropped rather than refused (AIP-203), so a client may send back a record it read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, ClassVar, Protocol, TypeVar, cast

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from crmkit import contract
from crmkit.errors import Invalid, Violation
from crmkit.limits import is_map_field


class Record(Protocol):
    """A dataclass."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


R = TypeVar("R", bound=Record)


def writable_paths(kind: type[Record]) -> frozenset[str]:
    return frozenset(f.name for f in fields(kind))


def mask_paths(update_mask: Sequence[str], record: Message, writable: frozenset[str]) -> list[str]:
    """The paths an update of `record` writes, in order, without repeats: those the mask names,
    or without a mask every field the message sets (proto3: every non-default field). The
    record's output-only fields (as its proto marks them) are dropped; an entry of a writable
    map field may be named alone; an unknown path is Invalid naming update_mask."""
    desc = cast(Descriptor, record.DESCRIPTOR)  # the stubs allow upb's descriptor type too
    output_only = contract.output_only_fields(desc)
    maps = {f.name for f in desc.fields if is_map_field(f)} & writable
    kept: list[str] = []
    out: list[Violation] = []
    for path in list(update_mask) or [f.name for f, _ in record.ListFields()]:
        top, dot, key = path.partition(".")
        if path in output_only:
            continue
        if path in writable or (top in maps and dot and key):
            if path not in kept:
                kept.append(path)
        else:
            out.append(("update_mask", f"unknown field {path!r}"))
    if out:
        raise Invalid(out)
    return kept


def top_level(paths: Iterable[str]) -> set[str]:
    return {p.partition(".")[0] for p in paths}


def merge(current: R, draft: R, paths: Iterable[str]) -> R:
    """`current` with the masked fields taken from `draft`.

    A map field named whole is replaced whole; "<map>.<key>" sets that entry from the draft,
    or removes it when the draft does not carry it.
    """
    changes: dict[str, Any] = {}
    for path in paths:
        top, _, key = path.partition(".")
        if not key:
            changes[top] = getattr(draft, top)
            continue
        entries = dict(changes.get(top, getattr(current, top)))
        sent: Mapping[str, Any] = getattr(draft, top)
        if key in sent:
            entries[key] = sent[key]
        else:
            entries.pop(key, None)
        changes[top] = entries
    return replace(current, **changes)


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b  # 1.0 == True in Python; not for a record


def changed_fields(old: R, new: R) -> list[str]:
    """The fields whose values differ; for a map field, one "<map>.<key>" per changed entry."""
    changed: list[str] = []
    for f in fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            changed += [
                f"{f.name}.{k}"
                for k in sorted(set(before) | set(after))
                if not _same(before.get(k), after.get(k))
            ]
        elif before != after:
            changed.append(f.name)
    return changed
