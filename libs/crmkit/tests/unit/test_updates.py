"""Partial updates: mask resolution, merging (map entries included) and changed fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from crm.contacts.v1 import contacts_pb2
from crmkit import updates
from crmkit.errors import Invalid, StaleEtag, check_etag


@dataclass(frozen=True)
class Thing:
    name: str = ""
    size: int = 0
    labels: Mapping[str, object] = field(default_factory=dict)


WRITABLE = updates.writable_paths(Thing)


def test_writable_paths_are_the_fields() -> None:
    assert {"name", "size", "labels"} == WRITABLE


# Contact's output-only fields (id, etag, ...) come from its proto; custom_fields is a map.
CONTACT_WRITABLE = frozenset({"first_name", "last_name", "tags", "custom_fields"})


def test_an_empty_mask_means_the_fields_set_in_the_message() -> None:
    msg = contacts_pb2.Contact(first_name="Ada", tags=["x"])
    assert updates.mask_paths([], msg, CONTACT_WRITABLE) == ["first_name", "tags"]
    assert updates.mask_paths(["last_name"], msg, CONTACT_WRITABLE) == ["last_name"]


def test_masks_drop_output_only_and_repeats_and_name_unknown_paths() -> None:
    msg = contacts_pb2.Contact()
    assert updates.mask_paths(
        ["first_name", "id", "first_name", "custom_fields.tier"], msg, CONTACT_WRITABLE
    ) == ["first_name", "custom_fields.tier"]
    with pytest.raises(Invalid) as err:
        updates.mask_paths(["colour", "tags.x", "custom_fields."], msg, CONTACT_WRITABLE)
    assert err.value.violations == [
        ("update_mask", "unknown field 'colour'"),
        ("update_mask", "unknown field 'tags.x'"),
        ("update_mask", "unknown field 'custom_fields.'"),
    ]


def test_merge_takes_masked_fields_and_single_map_entries() -> None:
    current = Thing("a", 1, {"keep": 1, "drop": 2, "change": 3})
    draft = Thing("b", 9, {"change": 4, "new": 5})
    merged = updates.merge(current, draft, ["name", "labels.change", "labels.drop", "labels.new"])
    assert merged == Thing("b", 1, {"keep": 1, "change": 4, "new": 5})
    assert updates.merge(current, draft, ["labels"]) == Thing("a", 1, {"change": 4, "new": 5})


def test_changed_fields_lists_map_entries_and_tells_true_from_one() -> None:
    old = Thing("a", 1, {"flag": True, "same": "x"})
    new = Thing("a", 2, {"flag": 1, "same": "x", "added": "y"})
    assert updates.changed_fields(old, new) == ["size", "labels.added", "labels.flag"]
    assert updates.top_level(["labels.flag", "size"]) == {"labels", "size"}


def test_a_write_goes_ahead_only_with_the_stored_etag_or_none() -> None:
    check_etag("deal", "e2", "e2")
    check_etag("deal", "e2", "")
    with pytest.raises(StaleEtag):
        check_etag("deal", "e2", "e1")
