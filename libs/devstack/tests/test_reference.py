"""The docs' reference tables (RPCs, scopes, events) are the contract's, never copies of it."""

from __future__ import annotations

import pytest

from trellis_devstack import declaration, reference


def test_every_reference_table_is_current() -> None:
    assert reference.stale() == [], "run `make docs` and commit the READMEs it rewrote"


def test_a_hand_edited_table_is_found_and_a_missing_block_is_an_error() -> None:
    decl = declaration.load()
    edited = "<!-- reference:scopes -->\n`contacts:read`\n<!-- /reference:scopes -->\n"
    fresh = reference.render(edited, {"scopes": lambda: reference.scope_list(decl)})
    assert fresh != edited
    assert "`contacts:write`" in fresh
    assert "`admin`" in fresh
    with pytest.raises(ValueError, match="reference:events"):
        reference.render("no markers here", {"events": lambda: ""})
