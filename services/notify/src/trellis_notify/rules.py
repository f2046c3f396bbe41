"""Rules: when an event of a type arrives and its data meets the conditions, send a template to
the contact, the owner or an address, or send the event to a webhook. No I/O here: the rules'
shape, their validation and the evaluation of conditions on an event's data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from crmkit import text, updates
from crmkit.errors import Invalid, Violation
from crmkit.ids import reference
from trellis_notify import domain

_PATH = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_MISSING = object()


class Operator(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"
    GT = "gt"
    LT = "lt"
    CONTAINS = "contains"


class Recipient(StrEnum):
    CONTACT = "contact"
    OWNER = "owner"
    ADDRESS = "address"


@dataclass(frozen=True)
class Condition:
    field: str
    operator: Operator | None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    template_id: str = ""
    recipient: Recipient | None = None
    address: str = ""
    contact_field: str = ""
    webhook_id: str = ""


@dataclass(frozen=True)
class RuleFields:
    name: str = ""
    event_type: str = ""
    conditions: tuple[Condition, ...] = ()
    action: Action = field(default_factory=Action)
    disabled: bool = False


@dataclass(frozen=True)
class Rule:
    id: str
    fields: RuleFields
    version: int
    etag: str
    create_time: datetime
    update_time: datetime


WRITABLE = updates.writable_paths(RuleFields)


def normalize(draft: RuleFields, paths: Sequence[str] | frozenset[str]) -> RuleFields:
    """Check the fields named in `paths`; raise Invalid naming every bad one."""
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    if "name" in paths:
        changes["name"] = text.required(draft.name, "rule.name", out)
    if "event_type" in paths:
        changes["event_type"] = domain.pattern(draft.event_type, "rule.event_type", out)
    if "conditions" in paths:
        changes["conditions"] = tuple(
            _condition(c, f"rule.conditions[{i}]", out) for i, c in enumerate(draft.conditions)
        )
    if "action" in paths:
        changes["action"] = _action(draft.action, "rule.action", out)
    if out:
        raise Invalid(out)
    return replace(draft, **changes)


def _condition(condition: Condition, path: str, out: list[Violation]) -> Condition:
    name = condition.field.strip()
    if not _PATH.fullmatch(name):
        out.append((f"{path}.field", "a dotted path into the event's data, e.g. deal.stage_id"))
    op, values = condition.operator, tuple(v.strip() for v in condition.values)
    if op is None:
        out.append((f"{path}.operator", "must be EQ, NEQ, EXISTS, NOT_EXISTS, GT, LT or CONTAINS"))
    elif op in (Operator.EQ, Operator.NEQ) and not values:
        out.append((f"{path}.values", "needs at least one value"))
    elif op in (Operator.EXISTS, Operator.NOT_EXISTS) and values:
        out.append((f"{path}.values", "takes no values"))
    elif op in (Operator.GT, Operator.LT, Operator.CONTAINS) and len(values) != 1:
        out.append((f"{path}.values", "takes exactly one value"))
    elif op in (Operator.GT, Operator.LT) and _number(values[0]) is None:
        out.append((f"{path}.values[0]", "must be a number"))
    return Condition(name, op, values)


def _action(action: Action, path: str, out: list[Violation]) -> Action:
    template_id, webhook_id = action.template_id.strip(), action.webhook_id.strip()
    if bool(template_id) == bool(webhook_id):
        out.append((path, "needs a template_id (send an email) or a webhook_id, not both"))
        return action
    template_id = reference(template_id, f"{path}.template_id", out, "template")
    webhook_id = reference(webhook_id, f"{path}.webhook_id", out, "webhook")
    address, contact_field = action.address.strip(), action.contact_field.strip()
    if webhook_id:
        return Action(webhook_id=webhook_id)
    if action.recipient is None:
        out.append((f"{path}.recipient", "must be CONTACT, OWNER or ADDRESS"))
    if action.recipient is Recipient.ADDRESS:
        address = domain.email_address(address, f"{path}.address", out)
    elif address:
        out.append((f"{path}.address", "only for RECIPIENT_KIND_ADDRESS"))
    if contact_field and not _PATH.fullmatch(contact_field):
        out.append((f"{path}.contact_field", "a dotted path into the event's data"))
    return Action(
        template_id=template_id,
        recipient=action.recipient,
        address=address,
        contact_field=contact_field,
    )


# --- evaluation -------------------------------------------------------------------------------


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of an event's data, or _MISSING."""
    value: Any = data
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _empty(value: Any) -> bool:
    return value is _MISSING or value is None or value in ("", [], {})


def holds(condition: Condition, data: Mapping[str, Any]) -> bool:
    value = lookup(data, condition.field)
    match condition.operator:
        case Operator.EXISTS:
            return not _empty(value)
        case Operator.NOT_EXISTS:
            return _empty(value)
        case Operator.EQ:
            return value is not _MISSING and _text(value) in condition.values
        case Operator.NEQ:
            return value is _MISSING or _text(value) not in condition.values
        case Operator.GT | Operator.LT:
            have, want = _number(value), _number(condition.values[0])
            if have is None or want is None:
                return False
            return have > want if condition.operator is Operator.GT else have < want
        case Operator.CONTAINS:
            if isinstance(value, list):
                return condition.values[0] in [_text(v) for v in value]
            return isinstance(value, str) and condition.values[0] in value
    return False


def fires(rule: RuleFields, event_type: str, data: Mapping[str, Any]) -> bool:
    return (
        not rule.disabled
        and domain.matches([rule.event_type], event_type)
        and all(holds(c, data) for c in rule.conditions)
    )
