"""What a custom field may hold."""

from __future__ import annotations

import math

from crmkit import customvalues

OTHER = "must be a string, a number or a boolean"


def test_scalars_fit_and_other_kinds_get_the_callers_word() -> None:
    for fits in ("x", 1, 2.5, True):
        assert customvalues.scalar_problem(fits, OTHER) is None
    assert customvalues.scalar_problem(math.inf, OTHER) == "must be a finite number"
    assert customvalues.scalar_problem(["x"], OTHER) == OTHER


def test_strings_are_bounded_and_hold_no_nul() -> None:
    assert customvalues.string_problem("a" * customvalues.MAX_STRING) is None
    assert customvalues.string_problem("a" * 1001) == "longer than 1000 characters"
    assert customvalues.string_problem("a\x00b") == "must not contain NUL characters"


def test_names_are_lower_case_identifiers() -> None:
    assert customvalues.NAME.fullmatch("tier_2")
    assert not customvalues.NAME.fullmatch("Tier")
