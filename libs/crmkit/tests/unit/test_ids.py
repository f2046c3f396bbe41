"""Ids and links to records by id."""

from __future__ import annotations

import pytest

from crmkit.errors import NotFound
from crmkit.ids import filter_id, known_id, new_id, reference


def test_a_reference_is_canonical_empty_or_no_such_record() -> None:
    out: list[tuple[str, str]] = []
    known = new_id()
    assert reference(f" {known.upper()} ", "deal.contact_id", out, "contact") == known
    assert reference("  ", "deal.contact_id", out, "contact") == ""
    assert out == []
    assert reference("nope", "deal.contact_id", out, "contact") == "nope"
    assert out == [("deal.contact_id", "no such contact")]


def test_an_id_that_cannot_exist_is_not_found() -> None:
    known = new_id()
    assert known_id("deal", known.upper()) == known
    with pytest.raises(NotFound):
        known_id("deal", "nope")


def test_a_filter_id_is_canonical_empty_or_matches_nothing() -> None:
    known = new_id()
    assert filter_id(f" {known.upper()} ") == known
    assert filter_id("  ") == ""
    assert filter_id("nope") is None
