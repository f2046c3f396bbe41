"""Contacts' rules: the records, their validation and normalisation, update masks. No I/O.

Validation collects every problem of a request at once and names each by its request path
("contact.emails[1]"), so a client can fix all fields in one round trip. The rules that need
the database (custom field definitions, company existence, email uniqueness, the current
record) take what they need as arguments; the store calls them inside its transaction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from crmkit import contactinfo, customvalues, text
from crmkit.errors import Invalid
from crmkit.ids import reference

Violation = tuple[str, str]

# --- values -----------------------------------------------------------------------------------


class LifecycleStage(StrEnum):
    SUBSCRIBER = "subscriber"
    LEAD = "lead"
    MARKETING_QUALIFIED_LEAD = "marketing_qualified_lead"
    SALES_QUALIFIED_LEAD = "sales_qualified_lead"
    OPPORTUNITY = "opportunity"
    CUSTOMER = "customer"
    EVANGELIST = "evangelist"
    OTHER = "other"


class ObjectType(StrEnum):
    CONTACT = "contact"
    COMPANY = "company"


class FieldType(StrEnum):
    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"
    DATE = "date"
    ENUM = "enum"


@dataclass(frozen=True)
class FieldDefinition:
    object_type: ObjectType
    name: str
    type: FieldType
    options: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class ContactFields:
    """What a client may write on a contact; drafts and stored records share the shape."""

    first_name: str = ""
    last_name: str = ""
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    company_id: str = ""  # "" when the contact has no company
    owner_id: str = ""
    tags: tuple[str, ...] = ()
    lifecycle_stage: LifecycleStage | None = None
    # Drafts hold what the request sent (None clears a field); stored records only values
    # their definitions accept: str, float or bool.
    custom_fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class CompanyFields:
    """What a client may write on a company."""

    name: str = ""
    domain: str = ""
    industry: str = ""
    size: int = 0
    custom_fields: Mapping[str, object] = field(default_factory=dict)


class Fields(Protocol):
    """ContactFields or CompanyFields: a dataclass with custom fields."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def custom_fields(self) -> Mapping[str, object]: ...


F = TypeVar("F", bound=Fields)


@dataclass(frozen=True)
class Record(Generic[F]):
    """A stored contact or company: its writable fields plus what only the service sets."""

    id: str
    fields: F
    version: int
    etag: str
    create_time: datetime
    update_time: datetime


Contact = Record[ContactFields]
Company = Record[CompanyFields]

# --- field rules ------------------------------------------------------------------------------

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def email_key(email: str) -> str:
    """What makes two addresses the same for uniqueness: case does not matter."""
    return email.lower()


def _emails(values: Iterable[str], path: str, out: list[Violation]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    result = []
    for i, raw in enumerate(values):
        email = raw.strip()
        if not contactinfo.is_email(email):
            out.append((f"{path}[{i}]", contactinfo.NOT_AN_EMAIL))
        elif (first := seen.setdefault(email_key(email), i)) != i:
            out.append((f"{path}[{i}]", f"the same address as {path}[{first}]"))
        result.append(email)  # stored as given (trimmed); only the uniqueness key is lowered
    return tuple(result)


def _phones(values: Iterable[str], path: str, out: list[Violation]) -> tuple[str, ...]:
    result: list[str] = []
    for i, raw in enumerate(values):
        phone = contactinfo.phone_number(raw)
        if not contactinfo.is_e164(phone):
            out.append((f"{path}[{i}]", contactinfo.NOT_A_PHONE))
        elif phone in result:
            out.append((f"{path}[{i}]", f"the same number as {path}[{result.index(phone)}]"))
        result.append(phone)
    return tuple(result)


def _web_domain(value: str, path: str, out: list[Violation]) -> str:
    value = value.strip().lower()
    if value and not contactinfo.is_domain_name(value):
        out.append((path, "not a valid domain name, e.g. example.com"))
    return value


def _size(value: int, path: str, out: list[Violation]) -> int:
    if value < 0:
        out.append((path, "must not be negative"))
    return value


def normalize_contact(
    draft: ContactFields, paths: Collection[str], prefix: str = "contact"
) -> ContactFields:
    """Trim, canonicalise and check the top-level fields named in `paths`; raise Invalid.

    Fields outside `paths` are left alone: an update ignores what its mask does not name.
    Custom fields need the tenant's definitions, so `finish_contact` checks them.
    """
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "first_name" | "last_name" | "owner_id":
                changes[name] = text.one_line(value, path, out)
            case "emails":
                changes[name] = _emails(value, path, out)
            case "phones":
                changes[name] = _phones(value, path, out)
            case "tags":
                changes[name] = text.tags(value, path, out)
            case "company_id":
                changes[name] = reference(value, path, out, "company")
    if out:
        raise Invalid(out)
    return replace(draft, **changes)


def normalize_company(
    draft: CompanyFields, paths: Collection[str], prefix: str = "company"
) -> CompanyFields:
    """As normalize_contact, for a company."""
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "name":
                changes[name] = text.required(value, path, out)
            case "industry":
                changes[name] = text.one_line(value, path, out)
            case "domain":
                changes[name] = _web_domain(value, path, out)
            case "size":
                changes[name] = _size(value, path, out)
    if out:
        raise Invalid(out)
    return replace(draft, **changes)


# --- custom fields ----------------------------------------------------------------------------


def _custom_value(value: object, definition: FieldDefinition) -> str | None:
    """What is wrong with `value` for `definition`, or None when it fits."""
    match definition.type:
        case FieldType.STRING:
            if not isinstance(value, str):
                return "must be a string"
            return customvalues.string_problem(value)
        case FieldType.NUMBER:
            # bool is an int in Python, but true is not a number in JSON.
            if isinstance(value, bool) or not isinstance(value, int | float):
                return "must be a number"
            if not math.isfinite(value):
                return "must be a finite number"
        case FieldType.BOOL:
            if not isinstance(value, bool):
                return "must be true or false"
        case FieldType.DATE:
            if not isinstance(value, str) or not _DATE.fullmatch(value):
                return "must be a date as YYYY-MM-DD"
            try:
                date.fromisoformat(value)
            except ValueError:
                return "not a calendar date"
        case FieldType.ENUM:
            if value not in definition.options:
                return f"must be one of: {', '.join(definition.options)}"
    return None


def check_custom_fields(
    values: Mapping[str, object], definitions: Iterable[FieldDefinition], prefix: str
) -> dict[str, object]:
    """The values that fit the tenant's definitions, without the cleared (None) ones."""
    by_name = {d.name: d for d in definitions}
    out: list[Violation] = []
    kept: dict[str, object] = {}
    for name, value in values.items():
        if value is None:
            continue  # null clears a field, known or not
        path = f"{prefix}.custom_fields.{name}"
        definition = by_name.get(name)
        if definition is None:
            out.append((path, "no such custom field; define it first"))
        elif (problem := _custom_value(value, definition)) is not None:
            out.append((path, problem))
        else:
            kept[name] = value
    if out:
        raise Invalid(out)
    return kept


def finish_contact(
    fields_: ContactFields, definitions: Iterable[FieldDefinition], prefix: str = "contact"
) -> ContactFields:
    """The whole-record rules of a contact about to be stored (after an update's merge)."""
    out: list[Violation] = []
    if not (fields_.first_name or fields_.last_name or fields_.emails):
        out.append((prefix, "a contact needs a first name, a last name or an email address"))
    try:
        fields_ = replace(
            fields_, custom_fields=check_custom_fields(fields_.custom_fields, definitions, prefix)
        )
    except Invalid as exc:
        out.extend(exc.violations)
    if out:
        raise Invalid(out)
    return fields_


def finish_company(
    fields_: CompanyFields, definitions: Iterable[FieldDefinition], prefix: str = "company"
) -> CompanyFields:
    """The whole-record rules of a company about to be stored."""
    custom = check_custom_fields(fields_.custom_fields, definitions, prefix)
    return replace(fields_, custom_fields=custom)


def new_field_definition(
    *,
    object_type: ObjectType | None,
    name: str,
    type_: FieldType | None,
    options: Sequence[str],
    label: str,
    prefix: str = "field_definition",
) -> FieldDefinition:
    """A checked definition; the enums are None when the request left them unspecified."""
    out: list[Violation] = []
    if object_type is None:
        out.append((f"{prefix}.object_type", "must be CONTACT or COMPANY"))
    if not customvalues.NAME.fullmatch(name):
        out.append(
            (
                f"{prefix}.name",
                "must be 1-64 lower-case letters, digits or underscores, starting with a letter",
            )
        )
    if type_ is None:
        out.append((f"{prefix}.type", "must be one of STRING, NUMBER, BOOL, DATE, ENUM"))
    cleaned = tuple(text.one_line(o, f"{prefix}.options[{i}]", out) for i, o in enumerate(options))
    if type_ is FieldType.ENUM:
        if not cleaned:
            out.append((f"{prefix}.options", "an ENUM field needs at least one option"))
        for i, option in enumerate(cleaned):
            if not option:
                out.append((f"{prefix}.options[{i}]", "must not be empty"))
            elif cleaned.index(option) != i:
                out.append((f"{prefix}.options[{i}]", "repeats an earlier option"))
    elif cleaned:
        out.append((f"{prefix}.options", "only ENUM fields have options"))
    label = text.one_line(label, f"{prefix}.label", out)
    if out or object_type is None or type_ is None:
        raise Invalid(out)
    return FieldDefinition(object_type, name, type_, cleaned, label)


# --- consent ----------------------------------------------------------------------------------

# A little slack for the clocks of the systems that record consent on a contact's behalf.
_CONSENT_CLOCK_SKEW = timedelta(minutes=5)


class ConsentStatus(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"


class LegalBasis(StrEnum):
    CONSENT = "consent"
    LEGITIMATE_INTEREST_PROSPECT = "legitimate_interest_prospect"
    LEGITIMATE_INTEREST_CLIENT = "legitimate_interest_client"
    PERFORMANCE_OF_CONTRACT = "performance_of_contract"
    LEGAL_OBLIGATION = "legal_obligation"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class ConsentFields:
    """What a client records about one purpose of a contact."""

    purpose: str
    status: ConsentStatus
    legal_basis: LegalBasis | None
    source: str
    time: datetime  # when the contact gave or withdrew it


@dataclass(frozen=True)
class Consent:
    id: str
    contact_id: str
    fields: ConsentFields
    version: int
    update_time: datetime


def new_consent(
    *,
    purpose: str,
    status: ConsentStatus | None,
    legal_basis: LegalBasis | None,
    source: str,
    time: datetime | None,
    now: datetime,
    prefix: str = "consent",
) -> ConsentFields:
    """A checked consent; the enums are None when the request left them unspecified."""
    out: list[Violation] = []
    purpose = purpose.strip()
    if not contactinfo.is_purpose(purpose):
        out.append(
            (
                f"{prefix}.purpose",
                "1-64 lower-case letters, digits or underscores, starting with a letter,"
                " e.g. marketing_email",
            )
        )
    if status is None:
        out.append((f"{prefix}.status", "must be GRANTED or WITHDRAWN"))
    if status is ConsentStatus.GRANTED and legal_basis is None:
        out.append((f"{prefix}.legal_basis", "a granted consent needs its legal basis"))
    source = text.one_line(source, f"{prefix}.source", out)
    if time is not None and time > now + _CONSENT_CLOCK_SKEW:
        out.append((f"{prefix}.time", "must not be in the future"))
    if out or status is None:
        raise Invalid(out)
    return ConsentFields(purpose, status, legal_basis, source, time or now)


# --- updates ----------------------------------------------------------------------------------
