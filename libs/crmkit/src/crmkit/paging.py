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

from google.protobuf.message import Message

from crmkit.errors import invalid_field
from crmkit.ids import canonical_uuid

DEFAULT_PAGE_SIZE = 50

# What a sort key may hold: JSON scalars that round-trip exactly.
Key = str | int
_KEY_TYPES = (str, int)
M = TypeVar("M", bound=Message)


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


def after_id(token: str, filters: Mapping[str, object]) -> str | None:
    """The id a page token resumes after, for a list in id order; None for the first page."""
    after = decode_page_token(token, filters, arity=1)
    if after is None:
        return None
    found = canonical_uuid(str(after[0]))
    if found is None:
        raise invalid_field("page_token", "malformed page token")
    return found


# A page stays well under gRPC's default 4 MiB message limit, whatever its records hold.
MAX_PAGE_BYTES = 3 * 1024 * 1024


def next_page(
    items: Sequence[M],
    size: int,
    key: Callable[[M], Sequence[Key]],
    filters: Mapping[str, object],
    max_bytes: int = MAX_PAGE_BYTES,
) -> tuple[list[M], str]:
    """Split what a query fetched with LIMIT size + 1 into the page and the next page's token.

    The one extra row says whether another page exists without a count query; the token is
    "" on the last page. A page also ends early, with a token, before its messages would
    exceed `max_bytes`: records near their field limits must not make a page too large to
    send.
    """
    page: list[M] = []
    total = 0
    for item in items[:size]:
        total += item.ByteSize()
        if page and total > max_bytes:
            return page, encode_page_token(key(page[-1]), filters)
        page.append(item)
    if len(items) <= size:
        return page, ""
    return page, encode_page_token(key(page[-1]), filters)
