"""The contacts rules on their own: validation, normalisation, masks and diffs."""

from __future__ import annotations

import math

import pytest

from crm.contacts.v1 import contacts_pb2
from crmkit import text, updates
from crmkit.errors import Invalid
from trellis_contacts import domain
from trellis_contacts.domain import (
    CompanyFields,
    ContactFields,
    FieldDefinition,
    FieldType,
    ObjectType,
)

ALL_CONTACT = updates.writable_paths(ContactFields)
ALL_COMPANY = updates.writable_paths(CompanyFields)


def resolve_mask(paths: list[str], writable: frozenset[str]) -> list[str]:
    record = contacts_pb2.Company() if writable == ALL_COMPANY else contacts_pb2.Contact()
    return updates.mask_paths(paths, record, writable)


DEFS = [
    FieldDefinition(ObjectType.CONTACT, "tier", FieldType.ENUM, ("gold", "silver")),
    FieldDefinition(ObjectType.CONTACT, "score", FieldType.NUMBER),
    FieldDefinition(ObjectType.CONTACT, "vip", FieldType.BOOL),
    FieldDefinition(ObjectType.CONTACT, "birthday", FieldType.DATE),
    FieldDefinition(ObjectType.CONTACT, "nickname", FieldType.STRING),
]


def fields_of(exc: pytest.ExceptionInfo[Invalid]) -> list[str]:
    return [f for f, _ in exc.value.violations]


def contact(**kw: object) -> ContactFields:
    return domain.normalize_contact(ContactFields(**kw), ALL_CONTACT)  # type: ignore[arg-type]


def test_emails_are_trimmed_and_kept_as_given() -> None:
    assert contact(emails=(" Ada@Example.COM ",)).emails == ("Ada@Example.COM",)
    assert domain.email_key("Ada@Example.COM") == "ada@example.com"


@pytest.mark.parametrize(
    "email",
    [
        "plain",
        "a@b",
        "a@@b.com",
        "a b@c.com",
        "a..b@c.com",
        ".a@c.com",
        "a@-b.com",
        "a@b.c",
        "a@b.123",
        f"{'x' * 65}@example.com",
        "",
    ],
)
def test_bad_emails_are_named_by_index(email: str) -> None:
    with pytest.raises(Invalid) as exc:
        contact(emails=("ok@example.com", email))
    assert fields_of(exc) == ["contact.emails[1]"]


@pytest.mark.parametrize(
    "email",
    ["a@b.co", "first.last+tag@sub.example.org", "o'neil@example.ie", "x@xn--p1ai.xn--p1ai"],
)
def test_good_emails(email: str) -> None:
    assert contact(emails=(email,)).emails == (email,)


def test_the_same_address_twice_differing_in_case_is_refused() -> None:
    with pytest.raises(Invalid) as exc:
        contact(emails=("ada@example.com", "ADA@example.com"))
    assert exc.value.violations == [("contact.emails[1]", "the same address as contact.emails[0]")]


def test_phones_become_e164() -> None:
    assert contact(phones=("+1 (415) 555-0100", "+44.20.7946.0958")).phones == (
        "+14155550100",
        "+442079460958",
    )


@pytest.mark.parametrize("phone", ["4155550100", "+0415555", "+1", "+1234567890123456", "+1415x55"])
def test_bad_phones(phone: str) -> None:
    with pytest.raises(Invalid) as exc:
        contact(phones=(phone,))
    assert fields_of(exc) == ["contact.phones[0]"]


def test_names_and_tags_are_trimmed_and_tags_deduplicated() -> None:
    c = contact(first_name="  Ada ", last_name=" Lovelace", tags=(" vip", "vip", "b2b "))
    assert (c.first_name, c.last_name, c.tags) == ("Ada", "Lovelace", ("vip", "b2b"))
    with pytest.raises(Invalid) as exc:
        contact(tags=("ok", "  "))
    assert fields_of(exc) == ["contact.tags[1]"]


@pytest.mark.parametrize("bad", ["Ada\x00", "Ada\nLovelace", "\x1b[31mred", "a\x85b"])
def test_text_fields_refuse_control_characters(bad: str) -> None:
    with pytest.raises(Invalid) as exc:
        contact(first_name=bad, last_name=bad, owner_id=bad, tags=(bad,))
    assert sorted(fields_of(exc)) == [
        "contact.first_name",
        "contact.last_name",
        "contact.owner_id",
        "contact.tags[0]",
    ]
    with pytest.raises(Invalid) as exc:
        text.filter_text(bad, "tag")
    assert fields_of(exc) == ["tag"]


def test_a_trailing_newline_does_not_sneak_past_a_pattern() -> None:
    with pytest.raises(Invalid):
        contact(phones=("+14155550100\n",))
    with pytest.raises(Invalid):
        domain.new_field_definition(
            object_type=ObjectType.CONTACT,
            name="tier\n",
            type_=FieldType.STRING,
            options=(),
            label="",
        )
    with pytest.raises(Invalid):
        domain.finish_contact(
            ContactFields(first_name="A", custom_fields={"birthday": "2024-01-01\n"}), DEFS
        )


def test_company_id_must_look_like_an_id() -> None:
    upper = "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B"
    assert contact(company_id=upper).company_id == upper.lower()
    with pytest.raises(Invalid) as exc:
        contact(company_id="acme")
    assert fields_of(exc) == ["contact.company_id"]


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(Invalid) as exc:
        contact(emails=("bad",), phones=("bad",), tags=("",), company_id="bad")
    assert sorted(fields_of(exc)) == [
        "contact.company_id",
        "contact.emails[0]",
        "contact.phones[0]",
        "contact.tags[0]",
    ]


def test_only_the_named_fields_are_checked() -> None:
    draft = ContactFields(emails=("bad",), first_name=" Ada ")
    assert domain.normalize_contact(draft, {"first_name"}).first_name == "Ada"


def test_a_contact_needs_a_name_or_an_email() -> None:
    with pytest.raises(Invalid) as exc:
        domain.finish_contact(contact(first_name="  ", phones=("+14155550100",)), [])
    assert fields_of(exc) == ["contact"]
    for ok in (
        contact(first_name="Ada"),
        contact(last_name="Lovelace"),
        contact(emails=("a@b.co",)),
    ):
        domain.finish_contact(ok, [])


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("unknown", "x", "no such custom field; define it first"),
        ("tier", "bronze", "must be one of: gold, silver"),
        ("score", "12", "must be a number"),
        ("score", True, "must be a number"),
        ("score", math.nan, "must be a finite number"),
        ("vip", 1.0, "must be true or false"),
        ("birthday", "2024/01/31", "must be a date as YYYY-MM-DD"),
        ("birthday", "20240131", "must be a date as YYYY-MM-DD"),
        ("birthday", "2024-02-30", "not a calendar date"),
        ("nickname", 3.0, "must be a string"),
        ("nickname", "x" * 1001, "longer than 1000 characters"),
        ("nickname", ["a"], "must be a string"),
        ("nickname", "a\x00b", "must not contain NUL characters"),
    ],
)
def test_custom_fields_follow_their_definitions(name: str, value: object, problem: str) -> None:
    with pytest.raises(Invalid) as exc:
        domain.finish_contact(ContactFields(first_name="A", custom_fields={name: value}), DEFS)
    assert exc.value.violations == [(f"contact.custom_fields.{name}", problem)]


def test_valid_custom_fields_are_kept_and_nulls_clear() -> None:
    values = {
        "tier": "gold",
        "score": 4.5,
        "vip": False,
        "birthday": "1815-12-10",
        "nickname": "Ada",
        "unknown": None,
    }
    done = domain.finish_contact(ContactFields(first_name="A", custom_fields=values), DEFS)
    assert done.custom_fields == {k: v for k, v in values.items() if v is not None}


def test_companies_need_a_name_and_a_sane_domain_and_size() -> None:
    ok = domain.normalize_company(
        CompanyFields(name=" Acme ", domain=" Acme.COM ", size=10), ALL_COMPANY
    )
    assert (ok.name, ok.domain) == ("Acme", "acme.com")
    with pytest.raises(Invalid) as exc:
        domain.normalize_company(
            CompanyFields(name=" ", domain="not a domain", size=-1), ALL_COMPANY
        )
    assert sorted(fields_of(exc)) == ["company.domain", "company.name", "company.size"]


@pytest.mark.parametrize("name", ["tier", "a", "x" + "_1" * 31, "a" * 64])
def test_field_names_that_are_allowed(name: str) -> None:
    d = domain.new_field_definition(
        object_type=ObjectType.CONTACT, name=name, type_=FieldType.STRING, options=(), label=" L "
    )
    assert (d.name, d.label) == (name, "L")


@pytest.mark.parametrize("name", ["", "Tier", "1st", "_x", "a-b", "a" * 65, "tier "])
def test_field_names_that_are_refused(name: str) -> None:
    with pytest.raises(Invalid) as exc:
        domain.new_field_definition(
            object_type=ObjectType.CONTACT, name=name, type_=FieldType.STRING, options=(), label=""
        )
    assert fields_of(exc) == ["field_definition.name"]


def test_field_definition_types_and_options() -> None:
    with pytest.raises(Invalid) as exc:
        domain.new_field_definition(object_type=None, name="x", type_=None, options=(), label="")
    assert fields_of(exc) == ["field_definition.object_type", "field_definition.type"]
    with pytest.raises(Invalid) as exc:
        domain.new_field_definition(
            object_type=ObjectType.COMPANY, name="x", type_=FieldType.ENUM, options=(), label=""
        )
    assert fields_of(exc) == ["field_definition.options"]
    with pytest.raises(Invalid) as exc:
        domain.new_field_definition(
            object_type=ObjectType.COMPANY,
            name="x",
            type_=FieldType.ENUM,
            options=("a", " ", "a "),
            label="",
        )
    assert fields_of(exc) == ["field_definition.options[1]", "field_definition.options[2]"]
    with pytest.raises(Invalid) as exc:
        domain.new_field_definition(
            object_type=ObjectType.COMPANY, name="x", type_=FieldType.DATE, options=("a",), label=""
        )
    assert fields_of(exc) == ["field_definition.options"]


def test_masks_drop_output_only_fields_and_refuse_unknown_ones() -> None:
    assert resolve_mask(
        ["first_name", "id", "etag", "version", "custom_fields.tier", "first_name"], ALL_CONTACT
    ) == ["first_name", "custom_fields.tier"]
    for bad in ("nickname", "custom_fields.", "emails.0", "First_Name"):
        with pytest.raises(Invalid) as exc:
            resolve_mask(["first_name", bad], ALL_CONTACT)
        assert fields_of(exc) == ["update_mask"]
    with pytest.raises(Invalid):
        resolve_mask(["lifecycle_stage"], ALL_COMPANY)


def test_merge_takes_only_the_masked_fields() -> None:
    current = ContactFields(
        first_name="Ada", last_name="Lovelace", custom_fields={"tier": "gold", "score": 1.0}
    )
    draft = ContactFields(first_name="Augusta", last_name="", custom_fields={"score": 2.0})
    merged = updates.merge(
        current, draft, ["last_name", "custom_fields.score", "custom_fields.tier"]
    )
    assert merged == ContactFields(first_name="Ada", last_name="", custom_fields={"score": 2.0})
    whole = updates.merge(current, draft, ["custom_fields"])
    assert whole.custom_fields == {"score": 2.0}


def test_changed_fields_name_custom_fields_one_by_one() -> None:
    old = ContactFields(first_name="Ada", tags=("a",), custom_fields={"x": 1.0, "y": "k"})
    new = ContactFields(first_name="Ada", tags=("a", "b"), custom_fields={"x": True, "z": "n"})
    assert updates.changed_fields(old, new) == [
        "tags",
        "custom_fields.x",
        "custom_fields.y",
        "custom_fields.z",
    ]
    assert updates.changed_fields(old, old) == []
