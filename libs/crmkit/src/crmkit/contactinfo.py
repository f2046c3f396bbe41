"""The rules a person's email addresses and phone numbers are held to, wherever a service
takes them: a lead's email becomes a contact's on conversion, so sales and contacts must
judge it alike.

Addresses: close to the WHATWG rule for <input type=email>, plus a dot in the domain and at
most 64 characters before the @: a CRM wants deliverable addresses, not every string RFC 5322
allows. Phone numbers: E.164, once the usual separators are taken out.
"""

from __future__ import annotations

import re

NOT_AN_EMAIL = "not a valid email address"
NOT_A_PHONE = "not an E.164 phone number, e.g. +14155550100"

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TLD = r"[A-Za-z][A-Za-z0-9-]{0,61}[A-Za-z0-9]"  # two or more characters, starting with a letter
# Used with fullmatch: `$` would let a trailing newline through.
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+{_TLD}")
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+{_TLD}")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_PHONE_SEPARATORS = str.maketrans("", "", " -().")


# A consent purpose, as contacts records it and notify asks for it ("marketing_email").
_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def is_purpose(value: str) -> bool:
    return _PURPOSE.fullmatch(value) is not None


def is_email(value: str) -> bool:
    return bool(_EMAIL.fullmatch(value)) and len(value.partition("@")[0]) <= 64


def is_domain_name(value: str) -> bool:
    """A host name as an address's domain may be (matched as given: lower-case it first)."""
    return bool(_DOMAIN.fullmatch(value))


def phone_number(raw: str) -> str:
    """`raw` without the separators people type ("+1 (415) 555-0100")."""
    return raw.translate(_PHONE_SEPARATORS)


def is_e164(phone: str) -> bool:
    return bool(_E164.fullmatch(phone))
