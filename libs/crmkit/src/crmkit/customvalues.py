"""What a custom field (a record's map of values a tenant names itself) may hold, in every
service that stores them: JSON scalars, as jsonb keeps them."""

from __future__ import annotations

import math
import re

NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # used with fullmatch
MAX_STRING = 1000  # characters; Value has no proto option to carry the bound


def string_problem(value: str) -> str | None:
    """What is wrong with a custom string, or None when it fits."""
    if len(value) > MAX_STRING:
        return f"longer than {MAX_STRING} characters"
    if "\x00" in value:  # PostgreSQL's jsonb cannot hold it; newlines are fine
        return "must not contain NUL characters"
    return None


def scalar_problem(value: object, otherwise: str) -> str | None:
    """What is wrong with a custom value that may be any string, finite number or boolean, or
    None when it fits; `otherwise` for a value of another kind (a list, a struct)."""
    if isinstance(value, str):
        return string_problem(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if math.isfinite(value) else "must be a finite number"
    return otherwise
