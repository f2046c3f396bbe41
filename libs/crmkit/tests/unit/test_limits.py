"""crmkit.limits: the max_length / max_items options of the protos, enforced on messages."""

from __future__ import annotations

from google.protobuf import struct_pb2

from crm.contacts.v1 import contacts_pb2
from crm.gateway.v1 import gateway_pb2
from crmkit.limits import check_limits


def _request(**contact: object) -> contacts_pb2.CreateContactRequest:
    return contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(**contact))  # type: ignore[arg-type]


def test_within_limits_reports_nothing() -> None:
    req = _request(
        first_name="x" * 200,
        emails=["a@example.com"] * 10,
        tags=["t" * 64],
    )
    req.contact.custom_fields["k" * 64].string_value = "v" * 10_000  # values are not bounded
    assert check_limits(req) == []


def test_empty_message_reports_nothing() -> None:
    assert check_limits(contacts_pb2.CreateContactRequest()) == []


def test_too_long_string_names_the_nested_field() -> None:
    assert check_limits(_request(first_name="x" * 201)) == [
        ("contact.first_name", "longer than 200 characters")
    ]


def test_length_counts_characters_not_bytes() -> None:
    assert check_limits(_request(first_name="é" * 200)) == []  # 400 bytes in UTF-8


def test_each_repeated_string_element_is_checked_by_index() -> None:
    req = _request(emails=["ok@example.com", "a" * 255, "b@example.com", "c" * 300])
    assert check_limits(req) == [
        ("contact.emails[1]", "longer than 254 characters"),
        ("contact.emails[3]", "longer than 254 characters"),
    ]


def test_too_many_items() -> None:
    assert check_limits(_request(phones=["+1"] * 11)) == [
        ("contact.phones", "at most 10 items are allowed")
    ]


def test_map_entry_count_and_key_length() -> None:
    req = _request()
    for i in range(101):
        req.contact.custom_fields[f"f{i}"].bool_value = True
    req.contact.custom_fields["tier" * 20].string_value = "gold"  # an 80-character key
    problems = check_limits(req)
    assert ("contact.custom_fields", "at most 100 entries are allowed") in problems
    assert (f"contact.custom_fields.{'tier' * 20}", "key longer than 64 characters") in problems
    assert len(problems) == 2


def test_struct_values_are_not_walked() -> None:
    req = _request()
    req.contact.custom_fields["tier"].struct_value.update({"x": "y" * 1000})
    assert check_limits(req) == []


def test_repeated_messages_are_walked_with_their_index() -> None:
    resp = gateway_pb2.ListApiKeysResponse(
        api_keys=[gateway_pb2.ApiKey(name="ok"), gateway_pb2.ApiKey(scopes=["s" * 65])]
    )
    assert check_limits(resp) == [("api_keys[1].scopes[0]", "longer than 64 characters")]


def test_top_level_fields_and_prefix() -> None:
    req = contacts_pb2.UpdateContactRequest(id="i" * 65, update_mask=["a"] * 21)
    assert check_limits(req, prefix="req.") == [
        ("req.id", "longer than 64 characters"),
        ("req.update_mask", "at most 20 items are allowed"),
    ]


def test_message_without_options_is_fine() -> None:
    assert check_limits(struct_pb2.Struct()) == []
