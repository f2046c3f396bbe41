"""Ids: UUIDv7, time-ordered so keyset paging and index locality come for free."""

from __future__ import annotations

import uuid

import uuid6


def new_id() -> str:
    return str(uuid6.uuid7())


def canonical_uuid(value: str) -> str | None:
    """The canonical form of a UUID (lower case, hyphenated), or None when it is not one."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def is_uuid(value: str) -> bool:
    return canonical_uuid(value) is not None
