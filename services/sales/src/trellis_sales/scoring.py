"""Lead scoring: the tenant's rules, their conditions, and a lead's score with its factors.

Fit rules test attributes of the lead (and of its contact); engagement rules count events of
a type about the lead's contact, each event's points halved every `half_life_days`. A score is
the sum of its factors, each a rule's points rounded once, so the factors shown always add up
to the score. The clock is an argument: decay is computed as of a given time. No I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from crmkit import text
from crmkit.errors import Invalid
from trellis_sales.domain import ContactSummary, LeadFields, Meta, Violation, email_domain

# Decaying scores are re-computed this often; points change little faster than that with
# half-lives counted in days.
DECAY_STEP = timedelta(days=1)
MAX_RULES = 200


class RuleKind(StrEnum):
    FIT = "fit"
    ENGAGEMENT = "engagement"


class Operator(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"


_ONE_VALUE = {Operator.EQ, Operator.NEQ, Operator.CONTAINS}
_NUMERIC = {Operator.GT, Operator.GTE, Operator.LT, Operator.LTE}
_SOME_VALUES = {Operator.IN, Operator.NOT_IN}
_NO_VALUE = {Operator.EXISTS, Operator.NOT_EXISTS}


@dataclass(frozen=True)
class Condition:
    field: str
    operator: Operator | None  # None: not given (refused by check_rule)
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleFields:
    label: str = ""
    kind: RuleKind | None = None
    points: int = 0
    conditions: tuple[Condition, ...] = ()
    event_type: str = ""
    contact_field: str = ""
    half_life_days: int = 0


@dataclass(frozen=True)
class Rule:
    meta: Meta
    fields: RuleFields


@dataclass(frozen=True)
class Factor:
    rule_id: str
    label: str
    kind: RuleKind
    points: int
    events: int = 0


@dataclass(frozen=True)
class Score:
    points: int
    factors: tuple[Factor, ...]
    # When decay will have changed it: None when nothing decays.
    rescore_at: datetime | None


# --- rules ------------------------------------------------------------------------------------

# What a fit rule may look at: the lead's own fields, the derived email_domain, its custom
# fields, and its contact's (from the contact projection).
LEAD_ATTRIBUTES = frozenset(
    {
        "first_name",
        "last_name",
        "email",
        "email_domain",
        "phone",
        "company_name",
        "company_size",
        "title",
        "source",
        "owner_id",
        "status",
        "tags",
        "contact_id",
    }
)
CONTACT_ATTRIBUTES = frozenset(
    {"first_name", "last_name", "email", "email_domain", "lifecycle_stage", "tags", "company_id"}
)
_PATH = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*")
_EVENT_TYPE = re.compile(r"crm\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.v[0-9]+")


def _fit_field(path: str) -> bool:
    top, _, rest = path.partition(".")
    if top == "custom_fields":
        return bool(rest) and "." not in rest
    if top == "contact":
        return rest in CONTACT_ATTRIBUTES
    return path in LEAD_ATTRIBUTES


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def _conditions(
    conditions: Sequence[Condition], kind: RuleKind, path: str, out: list[Violation]
) -> tuple[Condition, ...]:
    result = []
    for i, cond in enumerate(conditions):
        where = f"{path}[{i}]"
        field = cond.field.strip()
        if not _PATH.fullmatch(field):
            out.append((f"{where}.field", "must be a dotted path such as company_size"))
        elif kind is RuleKind.FIT and not _fit_field(field):
            known = ", ".join(sorted(LEAD_ATTRIBUTES))
            out.append(
                (
                    f"{where}.field",
                    f"not a lead attribute: one of {known}, custom_fields.<name> or "
                    "contact.<first_name|last_name|email|email_domain|lifecycle_stage|tags|company_id>",
                )
            )
        values = tuple(
            text.one_line(v, f"{where}.values[{j}]", out) for j, v in enumerate(cond.values)
        )
        op = cond.operator
        if op is None:
            out.append((f"{where}.operator", "must be given"))
        elif op in _NO_VALUE and values:
            out.append((f"{where}.values", f"{op.name} takes no value"))
        elif op in _SOME_VALUES and not values:
            out.append((f"{where}.values", f"{op.name} takes one or more values"))
        elif (op in _ONE_VALUE or op in _NUMERIC) and len(values) != 1:
            out.append((f"{where}.values", f"{op.name} takes exactly one value"))
        elif op in _NUMERIC and _number(values[0]) is None:
            out.append((f"{where}.values[0]", f"{op.name} compares numbers: not a number"))
        result.append(Condition(field, op, values))
    return tuple(result)


def check_rule(draft: RuleFields, prefix: str = "scoring_rule") -> RuleFields:
    """A rule as stored, or Invalid naming every problem."""
    out: list[Violation] = []
    label = text.one_line(draft.label, f"{prefix}.label", out)
    if not label:
        out.append((f"{prefix}.label", "must not be empty: it names the points on the lead"))
    if draft.points == 0:
        out.append((f"{prefix}.points", "must not be 0"))
    kind = draft.kind
    if kind is None:
        out.append((f"{prefix}.kind", "must be FIT or ENGAGEMENT"))
        raise Invalid(out)
    conditions = _conditions(draft.conditions, kind, f"{prefix}.conditions", out)
    event_type = draft.event_type.strip()
    contact_field = draft.contact_field.strip()
    if kind is RuleKind.ENGAGEMENT:
        if not _EVENT_TYPE.fullmatch(event_type):
            out.append(
                (
                    f"{prefix}.event_type",
                    "must be a CloudEvents type such as crm.support.ticket.created.v1",
                )
            )
        if not _PATH.fullmatch(contact_field):
            out.append(
                (f"{prefix}.contact_field", "must be the path of the contact id in the event data")
            )
    else:
        for name, value in (
            ("event_type", event_type),
            ("contact_field", contact_field),
            ("half_life_days", draft.half_life_days),
        ):
            if value:
                out.append((f"{prefix}.{name}", "only engagement rules have it"))
    if draft.half_life_days < 0:
        out.append((f"{prefix}.half_life_days", "must not be negative"))
    if out:
        raise Invalid(out)
    return replace(
        draft,
        label=label,
        conditions=conditions,
        event_type=event_type,
        contact_field=contact_field,
    )


# --- conditions -------------------------------------------------------------------------------


def resolve(data: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of nested mappings, or None."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _empty(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, list | tuple | dict) and not value)


def _same(value: object, wanted: str) -> bool:
    """Equality as a rule means it: numerically for numbers, case-insensitively for text."""
    number, target = _number(value), _number(wanted)
    if number is not None and target is not None:
        return number == target
    if isinstance(value, bool):
        return str(value).lower() == wanted.lower()
    if isinstance(value, str):
        return value.casefold() == wanted.casefold()
    return False


def holds(cond: Condition, data: Mapping[str, Any]) -> bool:
    value = resolve(data, cond.field)
    op = cond.operator
    first = cond.values[0] if cond.values else ""
    if op is Operator.EXISTS:
        return not _empty(value)
    if op is Operator.NOT_EXISTS:
        return _empty(value)
    if op is Operator.EQ:
        return _same(value, first)
    if op is Operator.NEQ:
        return not _same(value, first)
    if op is Operator.IN:
        return any(_same(value, v) for v in cond.values)
    if op is Operator.NOT_IN:
        return not any(_same(value, v) for v in cond.values)
    if op is Operator.CONTAINS:
        if isinstance(value, list | tuple):
            return any(_same(item, first) for item in value)
        return isinstance(value, str) and first.casefold() in value.casefold()
    number, target = _number(value), _number(first)
    if number is None or target is None:
        return False
    match op:
        case Operator.GT:
            return number > target
        case Operator.GTE:
            return number >= target
        case Operator.LT:
            return number < target
        case Operator.LTE:
            return number <= target
    return False


def matches(conditions: Iterable[Condition], data: Mapping[str, Any]) -> bool:
    return all(holds(c, data) for c in conditions)


def lead_attributes(lead: LeadFields, contact: ContactSummary | None) -> dict[str, Any]:
    """What fit rules look at, by the paths they name."""
    attributes: dict[str, Any] = {
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "email": lead.email,
        "email_domain": email_domain(lead.email),
        "phone": lead.phone,
        "company_name": lead.company_name,
        "company_size": lead.company_size,
        "title": lead.title,
        "source": lead.source,
        "owner_id": lead.owner_id,
        "status": lead.status.value if lead.status else "",
        "tags": list(lead.tags),
        "contact_id": lead.contact_id,
        "custom_fields": dict(lead.custom_fields),
        "contact": {},
    }
    if contact is not None:
        attributes["contact"] = {
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "email": contact.email,
            "email_domain": email_domain(contact.email),
            "lifecycle_stage": contact.lifecycle_stage,
            "tags": list(contact.tags),
            "company_id": contact.company_id,
        }
    return attributes


# --- scores -----------------------------------------------------------------------------------


def decayed(points: int, age: timedelta, half_life_days: int) -> float:
    """An event's points `age` after it happened; an event from the future counts whole."""
    if half_life_days <= 0:
        return float(points)
    days = max(age.total_seconds(), 0.0) / 86400
    return float(points * 0.5 ** (days / half_life_days))


def round_half_up(value: float) -> int:
    """Halves away from zero (2.5 -> 3, -2.5 -> -3), as people round points."""
    return int(Decimal(repr(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def score(
    rules: Iterable[Rule],
    attributes: Mapping[str, Any],
    hits: Mapping[str, Sequence[datetime]],
    now: datetime,
) -> Score:
    """The lead's score as of `now`: the fit rules that hold, the engagement rules' events
    (`hits`: event times by rule id) decayed to `now`. Factors worth 0 points are left out."""
    factors: list[Factor] = []
    decaying = False
    for rule in rules:
        f = rule.fields
        if f.kind is RuleKind.FIT:
            if matches(f.conditions, attributes):
                factors.append(Factor(rule.meta.id, f.label, RuleKind.FIT, f.points))
            continue
        times = hits.get(rule.meta.id, ())
        if not times:
            continue
        raw = sum(decayed(f.points, now - t, f.half_life_days) for t in times)
        points = round_half_up(raw)
        if points:
            factors.append(
                Factor(rule.meta.id, f.label, RuleKind.ENGAGEMENT, points, events=len(times))
            )
            decaying = decaying or f.half_life_days > 0
    total = sum(factor.points for factor in factors)
    return Score(total, tuple(factors), now + DECAY_STEP if decaying else None)
