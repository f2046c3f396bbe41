"""Email addresses and phone numbers, as every service judges them."""

from __future__ import annotations

import pytest

from crmkit import contactinfo


@pytest.mark.parametrize("good", ["ada@example.com", "a.b+c@mail.example.co", "x@a-b.io"])
def test_deliverable_addresses_pass(good: str) -> None:
    assert contactinfo.is_email(good)


@pytest.mark.parametrize(
    "bad", ["ada", "ada@example", "ada@example.com\n", "a..b@example.com", "a" * 65 + "@x.io"]
)
def test_other_strings_are_not_addresses(bad: str) -> None:
    assert not contactinfo.is_email(bad)


def test_phone_numbers_are_e164_once_separators_are_gone() -> None:
    assert contactinfo.phone_number("+1 (415) 555-0100") == "+14155550100"
    assert contactinfo.is_e164("+14155550100")
    assert not contactinfo.is_e164("004155550100")


def test_domain_names() -> None:
    assert contactinfo.is_domain_name("example.com")
    assert not contactinfo.is_domain_name("localhost")
