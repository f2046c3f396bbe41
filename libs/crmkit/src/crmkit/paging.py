"""Keyset paging shared by every list RPC: page sizes and opaque page tokens.

A page token is base64url (unpadded) of a small JSON object: the sort key of the last row of
the previous page ("a") and a fingerprint of the request's filters ("f"). The fingerprint makes
a token replayed with other filters an error instead of a silently wrong page (AIP-158). Tokens
are not signed: RLS bounds whatever a caller could forge to its own tenant's rows, and services
check the key's types before using it in SQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from crmkit.errors import invalid_field

DEFAULT_PAGE_SIZE = 50

# What a sort key may hold: JSON scalars that round-trip exactly.
Key = str | int
_KEY_TYPES = (str, int)
T = TypeVar("T")


def page_size(requested: int) -> int:
    """The effective page size: the default for 0, else the request's.

    Its bounds are the page_size field's min_value/max_value options, which the chassis
    checks before any handler runs (and refuses to serve a page_size without them).
    """
    return requested or DEFAULT_PAGE_SIZE


def _fingerprint(filters: Mapping[str, object]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(after: Sequence[Key], filters: Mapping[str, object]) -> str:
    """The token of the page that follows the row whose sort key is `after`."""
    body = json.dumps({"a": list(after), "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def decode_page_token(
    token: str, filters: Mapping[str, object], arity: int, field: str = "page_token"
) -> list[Key] | None:
    """The sort key a token resumes after (`arity` values), or None for "" (the first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8 and bad JSON all land here
        raise invalid_field(field, "malformed page token") from None
    after = body.get("a") if isinstance(body, dict) else None
    if (
        not isinstance(after, list)
        or len(after) != arity
        or not all(isinstance(v, _KEY_TYPES) and not isinstance(v, bool) for v in after)
    ):
        raise invalid_field(field, "malformed page token")
    if body.get("f") != _fingerprint(filters):
        raise invalid_field(field, "the page token belongs to a request with other filters")
    return after


def next_page(
    rows: Sequence[T], size: int, key: Callable[[T], Sequence[Key]], filters: Mapping[str, object]
) -> tuple[list[T], str]:
    """Split what a query fetched with LIMIT size + 1 into the page and the next page's token.

    The one extra row says whether another page exists without a count query; the token is
    "" on the last page.
    """
    page = list(rows[:size])
    if len(rows) <= size:
        return page, ""
    return page, encode_page_token(key(page[-1]), filters)
