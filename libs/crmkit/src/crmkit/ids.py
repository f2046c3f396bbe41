"""Ids: UUIDv7, time-ordered so keyset paging and index locality come for free."""

from __future__ import annotations

import uuid

import uuid6

from crmkit.errors import NotFound


def new_id() -> str:
    return str(uuid6.uuid7())


def canonical_uuid(value: str) -> str | None:
    """The canonical form of a UUID (lower case, hyphenated), or None when it is not one."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def filter_id(value: str) -> str | None:
    """A list filter by id: "" for none, None for one that cannot be an id (ids are opaque:
    it matches nothing)."""
    value = value.strip()
    return canonical_uuid(value) if value else ""


def known_id(kind: str, value: str) -> str:
    """The canonical id of a record to look up; one that cannot exist is simply NotFound, the
    same answer as another tenant's id."""
    found = canonical_uuid(value)
    if found is None:
        raise NotFound(kind, value)
    return found


def is_uuid(value: str) -> bool:
    return canonical_uuid(value) is not None


def reference(value: str, path: str, out: list[tuple[str, str]], what: str) -> str:
    """A link to a record by id: canonical, or "" for none; what cannot be an id is named as
    no such `what` (ids are opaque: a malformed one is a record that does not exist)."""
    value = value.strip()
    if not value:
        return ""
    ref = canonical_uuid(value)
    if ref is None:
        out.append((path, f"no such {what}"))
        return value
    return ref
