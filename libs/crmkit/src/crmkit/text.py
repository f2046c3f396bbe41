"""The rule every one-line text a service stores is held to: names, tags, labels, subjects.

Trimmed; no control characters (PostgreSQL cannot even store NUL); no bidirectional
overrides or isolates (U+202A-U+202E, U+2066-U+2069), which make a name display as something
it is not; and not made only of characters nobody can see (zero-width spaces, joiners).
Every service uses this one rule, so bad text is a clear INVALID_ARGUMENT everywhere.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from crmkit.errors import Invalid

Violation = tuple[str, str]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Format characters (zero-width space, joiners, marks), separators and combining marks: a
# text made only of these shows nothing.
_INVISIBLE = frozenset({"Cf", "Zs", "Zl", "Zp", "Mn", "Me"})


def one_line(value: str, path: str, out: list[Violation]) -> str:
    """`value` trimmed; what is wrong with it is added to `out` under `path`."""
    value = value.strip()
    if _CONTROL.search(value):
        out.append((path, "must not contain control characters"))
    elif _BIDI_CONTROL.search(value):
        out.append((path, "must not contain bidirectional override characters"))
    elif value and all(unicodedata.category(c) in _INVISIBLE for c in value):
        out.append((path, "must contain visible characters"))
    return value


def required(value: str, path: str, out: list[Violation]) -> str:
    """As one_line, and not empty."""
    value = one_line(value, path, out)
    if not value:
        out.append((path, "must not be empty"))
    return value


def tags(values: Iterable[str], path: str, out: list[Violation]) -> tuple[str, ...]:
    """Trimmed, one-line, non-empty tags; a repeated tag is harmless and kept once."""
    result: list[str] = []
    for i, raw in enumerate(values):
        tag = one_line(raw, f"{path}[{i}]", out)
        if not tag:
            out.append((f"{path}[{i}]", "must not be empty"))
        elif tag not in result:
            result.append(tag)
    return tuple(result)


def filter_text(value: str, path: str) -> str:
    """A text filter of a list request, held to the rule of the text it is compared with."""
    out: list[Violation] = []
    value = one_line(value, path, out)
    if out:
        raise Invalid(out)
    return value
