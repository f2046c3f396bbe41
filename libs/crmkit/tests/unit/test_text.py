"""The one-line text rule: what a name or a tag may hold."""

from __future__ import annotations

import pytest

from crmkit.errors import Invalid
from crmkit.text import filter_text, one_line, required, tags


@pytest.mark.parametrize(
    ("raw", "kept"),
    [("  Ada ", "Ada"), ("Zoë", "Zoë"), ("José\u0301", "José\u0301"), ("", ""), ("أحمد", "أحمد")],
)
def test_plain_text_is_trimmed_and_kept(raw: str, kept: str) -> None:
    out: list[tuple[str, str]] = []
    assert one_line(raw, "name", out) == kept
    assert out == []


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("Ada\x00", "must not contain control characters"),
        ("line\nbreak", "must not contain control characters"),
        ("exe\u202egnp.txt", "must not contain bidirectional override characters"),
        ("\u2066Ada\u2069", "must not contain bidirectional override characters"),
        ("\u200b\u200b", "must contain visible characters"),
        ("\u200d\ufeff\u00a0", "must contain visible characters"),
    ],
)
def test_hidden_and_deceptive_text_is_refused(raw: str, problem: str) -> None:
    out: list[tuple[str, str]] = []
    one_line(raw, "contact.first_name", out)
    assert out == [("contact.first_name", problem)]


def test_a_filter_is_trimmed_or_invalid_naming_its_field() -> None:
    assert filter_text("  vip ", "tag") == "vip"
    with pytest.raises(Invalid) as exc:
        filter_text("a\x00b", "tag")
    assert [path for path, _ in exc.value.violations] == ["tag"]


def test_required_text_must_not_be_empty() -> None:
    out: list[tuple[str, str]] = []
    assert required(" Ada ", "name", out) == "Ada"
    assert required("  ", "name", out) == ""
    assert out == [("name", "must not be empty")]


def test_tags_are_trimmed_kept_once_and_not_empty() -> None:
    out: list[tuple[str, str]] = []
    assert tags([" vip", "vip ", "", "new"], "tags", out) == ("vip", "new")
    assert out == [("tags[2]", "must not be empty")]
