"""SLA policies: their validation, which one a ticket matches, and the copy a ticket keeps.
No I/O.

A tenant's policies are tried in order (position, then creation); a ticket gets the first
whose conditions all hold. An empty condition holds for every ticket, so a last policy
without conditions is the tenant's default.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from crmkit import text
from crmkit.errors import Invalid, Violation
from crmkit.ids import canonical_uuid
from trellis_support.business_hours import (
    MINUTES_PER_DAY,
    BusinessCalendar,
    CalendarError,
    Window,
    country_holidays,
    zone_names,
)
from trellis_support.domain import Channel, Priority, TicketFields
from trellis_support.sla import DEFAULT_WARNING_PERCENT, AppliedPolicy, Target

MAX_TARGET_SECONDS = 366 * 24 * 3600
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COUNTRY = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True)
class Conditions:
    priorities: tuple[Priority, ...] = ()
    channels: tuple[Channel, ...] = ()
    tags: tuple[str, ...] = ()
    company_ids: tuple[str, ...] = ()

    def hold_for(self, ticket: TicketFields) -> bool:
        return (
            (not self.priorities or ticket.priority in self.priorities)
            and (not self.channels or ticket.channel in self.channels)
            and (not self.tags or any(t in ticket.tags for t in self.tags))
            and (not self.company_ids or ticket.company_id in self.company_ids)
        )


@dataclass(frozen=True)
class HoursDraft:
    """Business hours as sent; weekly entries are (weekday 0-6 or None, "HH:MM", "HH:MM")."""

    time_zone: str = ""
    weekly: tuple[tuple[int | None, str, str], ...] = ()
    holidays: tuple[str, ...] = ()
    holiday_country: str = ""
    holiday_subdivision: str = ""


@dataclass(frozen=True)
class PolicyDraft:
    """A policy as sent: what normalize_policy turns into PolicyFields."""

    name: str = ""
    position: int = 0
    conditions: Conditions = field(default_factory=Conditions)
    targets: Mapping[Target, float] = field(default_factory=dict)  # seconds
    warning_percent: int = 0
    business_hours: HoursDraft | None = None


@dataclass(frozen=True)
class PolicyFields:
    """What a client may write on a policy, checked."""

    name: str = ""
    position: int = 0
    conditions: Conditions = field(default_factory=Conditions)
    targets: Mapping[Target, int] = field(default_factory=dict)
    warning_percent: int = DEFAULT_WARNING_PERCENT
    business_hours: BusinessCalendar | None = None  # None: around the clock


@dataclass(frozen=True)
class SlaPolicy:
    id: str
    fields: PolicyFields
    version: int
    etag: str
    create_time: datetime
    update_time: datetime


def _conditions(value: Conditions, path: str, out: list[Violation]) -> Conditions:
    companies = []
    for i, raw in enumerate(value.company_ids):
        company = canonical_uuid(raw.strip())
        if company is None:
            out.append((f"{path}.company_ids[{i}]", "not a company id"))
        elif company not in companies:
            companies.append(company)
    return Conditions(
        priorities=tuple(dict.fromkeys(value.priorities)),
        channels=tuple(dict.fromkeys(value.channels)),
        tags=text.tags(value.tags, f"{path}.tags", out),
        company_ids=tuple(companies),
    )


def _targets(value: Mapping[Target, float], path: str, out: list[Violation]) -> dict[Target, int]:
    kept: dict[Target, int] = {}
    for target, seconds in value.items():
        where = f"{path}.{target.value}"
        if seconds != int(seconds):
            out.append((where, "must be a whole number of seconds"))
        elif not 0 < seconds <= MAX_TARGET_SECONDS:
            out.append((where, "must be more than 0s and at most a year"))
        else:
            kept[target] = int(seconds)
    if not value:
        out.append((path, "set at least one of first_response, next_response, resolution"))
    return kept


def _minutes(value: str, path: str, out: list[Violation], *, end: bool) -> int:
    if end and value == "24:00":
        return MINUTES_PER_DAY
    m = _CLOCK.fullmatch(value)
    if m is None:
        out.append((path, 'must be a time as "HH:MM"' + (' or "24:00"' if end else "")))
        return 0
    return int(m[1]) * 60 + int(m[2])


def _windows(
    weekly: Sequence[tuple[int | None, str, str]], path: str, out: list[Violation]
) -> tuple[Window, ...]:
    found: list[tuple[int, Window]] = []
    for i, (day, start_text, end_text) in enumerate(weekly):
        where = f"{path}[{i}]"
        before = len(out)
        start = _minutes(start_text, f"{where}.start", out, end=False)
        end = _minutes(end_text, f"{where}.end", out, end=True)
        if day is None:
            out.append((f"{where}.day", "must be a day of the week"))
        if len(out) > before or day is None:
            continue
        if start >= end:
            out.append((f"{where}.end", "must be after the start"))
            continue
        clash = next(
            (j for j, w in found if w.weekday == day and w.start < end and start < w.end), None
        )
        if clash is not None:
            out.append((where, f"overlaps {path}[{clash}]"))
            continue
        found.append((i, Window(day, start, end)))
    return tuple(w for _, w in found)


def _days_off(values: Iterable[str], path: str, out: list[Violation]) -> frozenset[date]:
    days = set()
    for i, raw in enumerate(values):
        try:
            if not _DATE.fullmatch(raw):
                raise ValueError
            days.add(date.fromisoformat(raw))
        except ValueError:
            out.append((f"{path}[{i}]", 'must be a date as "YYYY-MM-DD"'))
    return frozenset(days)


def _calendar(draft: HoursDraft, path: str, out: list[Violation]) -> BusinessCalendar:
    zone = draft.time_zone.strip()
    if zone not in zone_names():
        out.append((f"{path}.time_zone", 'must be an IANA time zone, e.g. "Europe/Berlin"'))
    country = draft.holiday_country.strip().upper()
    subdivision = draft.holiday_subdivision.strip().upper()
    if country:
        try:
            if not _COUNTRY.fullmatch(country):
                raise CalendarError(country)
            country_holidays(country)
        except CalendarError:
            out.append((f"{path}.holiday_country", "no holiday calendar for this country"))
            country = ""
    if subdivision and not country:
        out.append((f"{path}.holiday_subdivision", "needs a holiday_country"))
    elif subdivision:
        try:
            country_holidays(country, subdivision)
        except CalendarError:
            out.append((f"{path}.holiday_subdivision", f"no such subdivision of {country}"))
    return BusinessCalendar(
        time_zone=zone,
        windows=_windows(draft.weekly, f"{path}.weekly", out),
        days_off=_days_off(draft.holidays, f"{path}.holidays", out),
        holiday_country=country,
        holiday_subdivision=subdivision,
    )


def normalize_policy(
    draft: PolicyDraft, paths: Collection[str], prefix: str = "sla_policy"
) -> PolicyFields:
    """The fields named in `paths`, checked (the others at their defaults); raise Invalid."""
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "name":
                changes[name] = text.required(value, path, out)
            case "position":
                changes[name] = value
            case "conditions":
                changes[name] = _conditions(value, path, out)
            case "targets":
                changes[name] = _targets(value, path, out)
            case "warning_percent":
                changes[name] = value or DEFAULT_WARNING_PERCENT
            case "business_hours":
                changes[name] = None if value is None else _calendar(value, path, out)
    if out:
        raise Invalid(out)
    return replace(PolicyFields(), **changes)


def first_match(policies: Iterable[SlaPolicy], ticket: TicketFields) -> SlaPolicy | None:
    """The first policy (in the order given) whose conditions hold for the ticket."""
    return next((p for p in policies if p.fields.conditions.hold_for(ticket)), None)


def applied(policy: SlaPolicy) -> AppliedPolicy:
    f = policy.fields
    return AppliedPolicy(
        policy_id=policy.id,
        name=f.name,
        targets=dict(f.targets),
        warning_percent=f.warning_percent,
        calendar=f.business_hours or BusinessCalendar(),
    )
