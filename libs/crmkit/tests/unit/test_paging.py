"""Page sizes and page tokens: bounds, round trips, and every way a token can be bad."""

from __future__ import annotations

import base64

import grpc
import pytest

from crm.contacts.v1 import contacts_pb2
from crmkit import paging
from crmkit.errors import ServiceError
from crmkit.limits import check_limits

FILTERS = {"tag": "vip"}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_page_size_default() -> None:
    assert paging.page_size(0) == 50
    assert paging.page_size(1) == 1
    assert paging.page_size(500) == 500


def test_page_size_bounds_come_from_the_proto() -> None:
    within = contacts_pb2.ListContactsRequest(page_size=500)
    assert check_limits(within) == []
    for bad, message in ((-1, "must be at least 0"), (501, "must be at most 500")):
        assert check_limits(contacts_pb2.ListContactsRequest(page_size=bad)) == [
            ("page_size", message)
        ]


def test_tokens_round_trip_and_are_url_safe() -> None:
    token = paging.encode_page_token(["0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 7], FILTERS)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert paging.decode_page_token(token, FILTERS, arity=2) == [
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        7,
    ]
    assert paging.decode_page_token("", FILTERS, arity=2) is None


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "a",
        b64(b"\xff\xfe"),
        b64(b"not json"),
        b64(b"[1]"),
        b64(b'{"a": "x"}'),
        b64(b'{"a": ["x", "y"]}'),
        b64(b'{"a": [true]}'),
        b64(b'{"a": [null]}'),
        b64(b'{"a": ["x"]}'),  # no fingerprint
    ],
)
def test_malformed_tokens_name_page_token(token: str) -> None:
    with pytest.raises(ServiceError) as exc:
        paging.decode_page_token(token, FILTERS, arity=1)
    assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.violations[0][0] == "page_token"


def test_a_token_of_other_filters_is_refused() -> None:
    token = paging.encode_page_token(["x"], FILTERS)
    with pytest.raises(ServiceError) as exc:
        paging.decode_page_token(token, {"tag": "other"}, arity=1)
    assert "other filters" in exc.value.violations[0][1]


def _contacts(*ids: str, note: str = "") -> list[contacts_pb2.Contact]:
    return [contacts_pb2.Contact(id=i, first_name=note) for i in ids]


def _key(c: contacts_pb2.Contact) -> list[str]:
    return [c.id]


def test_next_page_splits_the_extra_row_off() -> None:
    assert paging.next_page(_contacts("a", "b"), 2, _key, {}) == (_contacts("a", "b"), "")
    page, token = paging.next_page(_contacts("a", "b", "c"), 2, _key, {})
    assert page == _contacts("a", "b")
    assert paging.decode_page_token(token, {}, arity=1) == ["b"]


def test_a_page_ends_before_it_grows_too_large_to_send() -> None:
    big = _contacts("a", "b", "c", "d", note="x" * 100)
    one = big[0].ByteSize()
    page, token = paging.next_page(big, 10, _key, {}, max_bytes=2 * one + 1)
    assert page == big[:2]
    assert paging.decode_page_token(token, {}, arity=1) == ["b"]
    # A single record larger than the budget still makes a page: no page is ever empty.
    page, token = paging.next_page(big, 10, _key, {}, max_bytes=1)
    assert (page, paging.decode_page_token(token, {}, arity=1)) == (big[:1], ["a"])


def test_after_id_is_the_canonical_id_of_the_token() -> None:
    upper = "0190A8E4-6B9C-7C3D-8E2F-123456789ABC"
    token = paging.encode_page_token([upper], FILTERS)
    assert paging.after_id(token, FILTERS) == upper.lower()
    assert paging.after_id("", FILTERS) is None
    with pytest.raises(ServiceError):
        paging.after_id(paging.encode_page_token(["not-an-id"], FILTERS), FILTERS)
