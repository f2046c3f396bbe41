"""Sales' records and their rules: validation, normalisation, update masks. No I/O.

Validation collects every problem of a request at once and names each by its request path
("deal.currency"), so a client can fix all fields in one round trip. Rules that need the
database (the current record, a stage's pipeline) take what they need as arguments; the
stores call them inside their transactions. Scoring has its own module (scoring.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import pycountry

from crmkit import contactinfo, customvalues, text, updates
from crmkit.errors import Invalid
from crmkit.ids import reference

if TYPE_CHECKING:
    from trellis_sales.scoring import Score

Violation = tuple[str, str]

# --- values -----------------------------------------------------------------------------------


class LeadStatus(StrEnum):
    NEW = "new"
    WORKING = "working"
    QUALIFIED = "qualified"
    DISQUALIFIED = "disqualified"
    CONVERTED = "converted"


class StageKind(StrEnum):
    OPEN = "open"
    CLOSED_WON = "closed_won"
    CLOSED_LOST = "closed_lost"


class ForecastCategory(StrEnum):
    PIPELINE = "pipeline"
    BEST_CASE = "best_case"
    COMMIT = "commit"
    CLOSED = "closed"
    OMITTED = "omitted"


class ActivityKind(StrEnum):
    CALL = "call"
    MEETING = "meeting"
    EMAIL = "email"
    NOTE = "note"
    TASK = "task"


class Period(StrEnum):
    MONTH = "month"
    QUARTER = "quarter"


@dataclass(frozen=True)
class ContactSummary:
    id: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    company_id: str = ""
    company_name: str = ""
    # Not shown, but fit rules may look at them ("contact.lifecycle_stage").
    emails: tuple[str, ...] = ()
    lifecycle_stage: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class LeadFields:
    """What a client may write on a lead; drafts and stored records share the shape."""

    first_name: str = ""
    last_name: str = ""
    email: str = ""
    phone: str = ""
    company_name: str = ""
    company_size: int = 0
    title: str = ""
    source: str = ""
    contact_id: str = ""
    owner_id: str = ""
    status: LeadStatus | None = None  # None in a draft: not sent
    tags: tuple[str, ...] = ()
    custom_fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    id: str  # "" in a draft: a new stage
    name: str
    probability: int
    kind: StageKind


@dataclass(frozen=True)
class PipelineFields:
    name: str = ""
    stages: tuple[Stage, ...] = ()
    is_default: bool = False


@dataclass(frozen=True)
class DealFields:
    name: str = ""
    amount: int = 0
    currency: str = ""
    pipeline_id: str = ""
    stage_id: str = ""
    close_date: date | None = None
    owner_id: str = ""
    contact_id: str = ""
    company_id: str = ""
    forecast_category: ForecastCategory | None = None  # None in a draft: not sent
    custom_fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ActivityFields:
    kind: ActivityKind | None = None
    subject: str = ""
    body: str = ""
    lead_id: str = ""
    deal_id: str = ""
    due_time: datetime | None = None
    done: bool = False
    owner_id: str = ""


@dataclass(frozen=True)
class Meta:
    """What only the service sets on a record."""

    id: str
    version: int
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class Lead:
    meta: Meta
    fields: LeadFields
    score: Score
    score_time: datetime
    contact: ContactSummary | None = None
    converted_deal_id: str = ""
    convert_time: datetime | None = None


@dataclass(frozen=True)
class Pipeline:
    meta: Meta
    fields: PipelineFields


@dataclass(frozen=True)
class Deal:
    meta: Meta
    fields: DealFields
    lead_id: str = ""
    close_time: datetime | None = None
    contact: ContactSummary | None = None


@dataclass(frozen=True)
class Activity:
    meta: Meta
    fields: ActivityFields
    done_time: datetime | None = None


# --- field rules ------------------------------------------------------------------------------

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NOT_A_SCALAR = "must be a string, a number or a boolean"
MAX_STAGES = 30


def email_domain(email: str) -> str:
    return email.rpartition("@")[2].lower() if "@" in email else ""


def _email(value: str, path: str, out: list[Violation]) -> str:
    value = value.strip()
    if value and not contactinfo.is_email(value):
        out.append((path, contactinfo.NOT_AN_EMAIL))
    return value


def _phone(value: str, path: str, out: list[Violation]) -> str:
    phone = contactinfo.phone_number(value)
    if phone and not contactinfo.is_e164(phone):
        out.append((path, contactinfo.NOT_A_PHONE))
    return phone


def custom_fields(
    values: Mapping[str, object], path: str, out: list[Violation]
) -> dict[str, object]:
    """The custom values to store, without the cleared (None) ones."""
    kept: dict[str, object] = {}
    for name, value in values.items():
        where = f"{path}.{name}"
        if not customvalues.NAME.fullmatch(name):
            out.append((where, "names are lower-case letters, digits or underscores"))
        elif value is None:
            continue
        elif (problem := customvalues.scalar_problem(value, _NOT_A_SCALAR)) is not None:
            out.append((where, problem))
        else:
            kept[name] = value
    return kept


def parse_date(value: str, path: str, out: list[Violation]) -> date | None:
    value = value.strip()
    if not value:
        return None
    if _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    out.append((path, "must be a calendar date as YYYY-MM-DD"))
    return None


def currency(value: str, path: str, out: list[Violation]) -> str:
    code = value.strip().upper()
    if not code:
        out.append((path, "must be an ISO 4217 currency code, e.g. EUR"))
    elif len(code) != 3 or not code.isalpha() or pycountry.currencies.get(alpha_3=code) is None:
        out.append((path, f"{value!r} is not an ISO 4217 currency code"))
    return code


def _raise(out: list[Violation]) -> None:
    if out:
        raise Invalid(out)


# --- leads ------------------------------------------------------------------------------------


def normalize_lead(draft: LeadFields, paths: Iterable[str], prefix: str = "lead") -> LeadFields:
    """Trim, canonicalise and check the top-level fields named in `paths`; raise Invalid."""
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "first_name" | "last_name" | "company_name" | "title" | "source" | "owner_id":
                changes[name] = text.one_line(value, path, out)
            case "email":
                changes[name] = _email(value, path, out)
            case "phone":
                changes[name] = _phone(value, path, out)
            case "tags":
                changes[name] = text.tags(value, path, out)
            case "contact_id":
                changes[name] = reference(value, path, out, "contact")
            case "status":
                if value is LeadStatus.CONVERTED:
                    out.append((path, "leads are converted with ConvertLead (:convert)"))
            case "custom_fields":
                changes[name] = custom_fields(value, path, out)
    _raise(out)
    return replace(draft, **changes)


def finish_lead(fields_: LeadFields, prefix: str = "lead") -> LeadFields:
    """The whole-record rules of a lead about to be stored."""
    if not (
        fields_.first_name
        or fields_.last_name
        or fields_.email
        or fields_.company_name
        or fields_.contact_id
    ):
        raise Invalid(
            [(prefix, "a lead needs a name, an email address, a company name or a contact")]
        )
    return replace(fields_, status=fields_.status or LeadStatus.NEW)


def check_status_change(old: LeadStatus | None, new: LeadStatus | None) -> None:
    if old is LeadStatus.CONVERTED and new is not LeadStatus.CONVERTED:
        raise Invalid([("lead.status", "a converted lead stays converted")])


# --- pipelines --------------------------------------------------------------------------------

DEFAULT_STAGES = (
    ("Appointment scheduled", 20, StageKind.OPEN),
    ("Qualified to buy", 40, StageKind.OPEN),
    ("Presentation scheduled", 60, StageKind.OPEN),
    ("Decision maker bought-in", 80, StageKind.OPEN),
    ("Contract sent", 90, StageKind.OPEN),
    ("Closed won", 100, StageKind.CLOSED_WON),
    ("Closed lost", 0, StageKind.CLOSED_LOST),
)
DEFAULT_PIPELINE_NAME = "Sales pipeline"


def normalize_pipeline(
    draft: PipelineFields, paths: Iterable[str], prefix: str = "pipeline"
) -> PipelineFields:
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path = f"{prefix}.{name}"
        match name:
            case "name":
                changes[name] = text.required(draft.name, path, out)
            case "stages":
                changes[name] = _stages(draft.stages, path, out)
    _raise(out)
    return replace(draft, **changes)


def _stages(stages: Sequence[Stage], path: str, out: list[Violation]) -> tuple[Stage, ...]:
    result: list[Stage] = []
    names: dict[str, int] = {}
    ids: dict[str, int] = {}
    for i, stage in enumerate(stages):
        where = f"{path}[{i}]"
        name = text.required(stage.name, f"{where}.name", out)
        if name and (first := names.setdefault(name.lower(), i)) != i:
            out.append((f"{where}.name", f"the same name as {path}[{first}]"))
        stage_id = reference(stage.id, f"{where}.id", out, "stage")
        if stage_id and (first := ids.setdefault(stage_id, i)) != i:
            out.append((f"{where}.id", f"the same stage as {path}[{first}]"))
        if stage.kind is StageKind.CLOSED_WON and stage.probability != 100:
            out.append((f"{where}.probability", "a closed-won stage has probability 100"))
        if stage.kind is StageKind.CLOSED_LOST and stage.probability != 0:
            out.append((f"{where}.probability", "a closed-lost stage has probability 0"))
        result.append(replace(stage, id=stage_id, name=name))
    kinds = {s.kind for s in result}
    for kind, what in (
        (StageKind.OPEN, "an open"),
        (StageKind.CLOSED_WON, "a closed-won"),
        (StageKind.CLOSED_LOST, "a closed-lost"),
    ):
        if kind not in kinds:
            out.append((path, f"a pipeline needs {what} stage"))
    return tuple(result)


# --- deals ------------------------------------------------------------------------------------


def normalize_deal(draft: DealFields, paths: Iterable[str], prefix: str = "deal") -> DealFields:
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "name":
                changes[name] = text.required(value, path, out)
            case "owner_id":
                changes[name] = text.one_line(value, path, out)
            case "currency":
                changes[name] = currency(value, path, out)
            case "pipeline_id":
                changes[name] = reference(value, path, out, "pipeline")
            case "stage_id":
                changes[name] = reference(value, path, out, "stage")
            case "contact_id":
                changes[name] = reference(value, path, out, "contact")
            case "company_id":
                changes[name] = reference(value, path, out, "company")
            case "forecast_category":
                if value is ForecastCategory.CLOSED:
                    out.append((path, "CLOSED is set by moving the deal to a closed-won stage"))
            case "custom_fields":
                changes[name] = custom_fields(value, path, out)
    _raise(out)
    return replace(draft, **changes)


def settle_deal(
    fields_: DealFields, stage_kind: StageKind, was: StageKind | None, prefix: str = "deal"
) -> DealFields:
    """The deal as its stage makes it: won deals CLOSED, lost ones OMITTED, reopened ones back
    in PIPELINE; an open deal may not claim CLOSED."""
    category = fields_.forecast_category
    if stage_kind is StageKind.CLOSED_WON:
        category = ForecastCategory.CLOSED
    elif stage_kind is StageKind.CLOSED_LOST:
        category = ForecastCategory.OMITTED
    elif category is None or (was is not None and was is not StageKind.OPEN):
        category = ForecastCategory.PIPELINE
    if not fields_.currency:
        raise Invalid([(f"{prefix}.currency", "must be an ISO 4217 currency code, e.g. EUR")])
    return replace(fields_, forecast_category=category)


# --- activities -------------------------------------------------------------------------------


def multiline(value: str, path: str, out: list[Violation]) -> str:
    """Notes: the one-line rule for each line; line breaks and tabs are allowed."""
    problems: list[Violation] = []
    for line in value.replace("\r\n", "\n").split("\n"):
        text.one_line(line.replace("\t", " "), path, problems)
    if problems:
        out.append(problems[0])
    return value.strip()


def normalize_activity(
    draft: ActivityFields, paths: Iterable[str], prefix: str = "activity"
) -> ActivityFields:
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "subject":
                changes[name] = text.required(value, path, out)
            case "body":
                changes[name] = multiline(value, path, out)
            case "owner_id":
                changes[name] = text.one_line(value, path, out)
            case "lead_id":
                changes[name] = reference(value, path, out, "lead")
            case "deal_id":
                changes[name] = reference(value, path, out, "deal")
            case "kind":
                if value is None:
                    out.append((path, "must be CALL, MEETING, EMAIL, NOTE or TASK"))
    _raise(out)
    return replace(draft, **changes)


def check_parent(fields_: ActivityFields, prefix: str = "activity") -> None:
    if bool(fields_.lead_id) == bool(fields_.deal_id):
        raise Invalid([(prefix, "an activity belongs to exactly one of lead_id and deal_id")])


# --- updates ----------------------------------------------------------------------------------

CUSTOM = "custom_fields"


class Fields(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Any]]


F = TypeVar("F", bound=Fields)


def merge(current: F, draft: F, paths: Iterable[str]) -> F:
    """`current` with the masked fields taken from `draft`; "custom_fields.<name>" sets one
    custom field, or removes it when the draft does not carry it."""
    changes: dict[str, Any] = {}
    custom: dict[str, object] | None = None
    for path in paths:
        top, _, key = path.partition(".")
        if not key:
            changes[top] = getattr(draft, top)
            continue
        if custom is None:
            custom = dict(changes.get(CUSTOM, getattr(current, CUSTOM)))
        drafted: Mapping[str, object] = getattr(draft, CUSTOM)
        if drafted.get(key) is not None:
            custom[key] = drafted[key]
        else:
            custom.pop(key, None)
    if custom is not None:
        changes[CUSTOM] = custom
    return replace(current, **changes)


def changed_fields(old: F, new: F) -> list[str]:
    """The top-level fields whose values differ: sales' events name custom_fields whole, not
    one entry at a time."""
    return list(dict.fromkeys(path.partition(".")[0] for path in updates.changed_fields(old, new)))
