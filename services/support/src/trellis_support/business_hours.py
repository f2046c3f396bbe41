"""Business-hours arithmetic: how much working time lies between two instants, and at which
instant a given amount of working time has passed. Pure: no clock and no I/O; the country
calendars come from the `holidays` package's bundled rules.

Working hours are wall-clock times in the calendar's IANA time zone, so a day's window is
converted to instants with that day's UTC offset: 09:00-17:00 stays eight hours on the day
daylight saving time starts, while a day that runs around the clock has 23 or 25 hours then.
All arithmetic on instants happens in UTC (subtracting two aware datetimes of one zone would
compare wall clocks and lose the hour a transition adds or removes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import holidays

MINUTES_PER_DAY = 24 * 60
# Beyond this, an amount of working time cannot be placed: a calendar whose every day is off
# would otherwise be searched forever.
_MAX_DAYS = 366 * 10


class CalendarError(ValueError):
    """A calendar that cannot be used: an unknown zone or country."""


@dataclass(frozen=True)
class Window:
    """Working hours on one weekday: [start, end) in minutes after local midnight."""

    weekday: int  # Monday 0 ... Sunday 6, as date.weekday()
    start: int
    end: int  # at most MINUTES_PER_DAY


@dataclass(frozen=True)
class BusinessCalendar:
    """When working time passes. No windows: every day, all day."""

    time_zone: str = "UTC"
    windows: tuple[Window, ...] = ()
    days_off: frozenset[date] = frozenset()
    holiday_country: str = ""
    holiday_subdivision: str = ""

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.time_zone)

    def is_day_off(self, day: date) -> bool:
        if day in self.days_off:
            return True
        if self.holiday_country:
            return day in country_holidays(self.holiday_country, self.holiday_subdivision)
        return False

    def working_windows(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's working hours as UTC instants, in order."""
        if self.is_day_off(day):
            return []
        minutes = (
            [(w.start, w.end) for w in self.windows if w.weekday == day.weekday()]
            if self.windows
            else [(0, MINUTES_PER_DAY)]
        )
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.zone)
        # Adding to an aware datetime moves its wall clock; astimezone then applies the offset
        # in force at that wall time.
        return [
            (
                (midnight + timedelta(minutes=start)).astimezone(UTC),
                (midnight + timedelta(minutes=end)).astimezone(UTC),
            )
            for start, end in sorted(minutes)
        ]

    def windows_from(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working windows that end after `instant`, clipped to start no earlier than it."""
        day = instant.astimezone(self.zone).date()
        for _ in range(_MAX_DAYS):
            for start, end in self.working_windows(day):
                if end > instant:
                    yield max(start, instant), end
            day += timedelta(days=1)


@cache
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise CalendarError(f"unknown time zone {name!r}") from None


@cache
def country_holidays(country: str, subdivision: str = "") -> holidays.HolidayBase:
    """A country's (and subdivision's) public holidays; years are filled in as asked."""
    try:
        return holidays.country_holidays(country, subdiv=subdivision or None)
    except NotImplementedError:
        raise CalendarError(f"no holiday calendar for {country!r}") from None


@cache
def zone_names() -> frozenset[str]:
    """The zones a calendar may name. Narrower than what ZoneInfo loads, which also opens the
    tz database's "posix/" and "right/" copies and files such as "localtime"."""
    return frozenset(available_timezones())


def check_calendar(calendar: BusinessCalendar) -> None:
    """Raise CalendarError if the zone or the holiday calendar does not exist."""
    if calendar.time_zone not in zone_names():
        raise CalendarError(f"unknown time zone {calendar.time_zone!r}")
    if calendar.holiday_country:
        country_holidays(calendar.holiday_country, calendar.holiday_subdivision)


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("business-hours arithmetic needs aware datetimes")
    return instant.astimezone(UTC)


def business_seconds(calendar: BusinessCalendar, start: datetime, end: datetime) -> float:
    """Working time between two instants, in seconds (0 when end is not after start)."""
    start, end = _utc(start), _utc(end)
    total = 0.0
    if end <= start:
        return total
    for a, b in calendar.windows_from(start):
        if a >= end:
            break
        total += (min(b, end) - a).total_seconds()
    return total


def add_business_seconds(calendar: BusinessCalendar, start: datetime, seconds: float) -> datetime:
    """The instant at which `seconds` of working time have passed since `start`.

    Zero seconds is `start` itself, even outside working hours; otherwise the answer always
    lies inside a working window (or at its end).
    """
    start = _utc(start)
    remaining = seconds
    if remaining <= 0:
        return start
    for a, b in calendar.windows_from(start):
        available = (b - a).total_seconds()
        if remaining <= available:
            return a + timedelta(seconds=remaining)
        remaining -= available
    raise CalendarError(f"the calendar has no working time within {_MAX_DAYS} days")


Interval = tuple[datetime, datetime | None]  # [start, end); None: still going


def elapsed_in(calendar: BusinessCalendar, intervals: Sequence[Interval], until: datetime) -> float:
    """Working time spent inside `intervals` up to `until`."""
    return sum(
        business_seconds(calendar, a, until if b is None else min(b, until))
        for a, b in intervals
        if a < until
    )


def instant_reaching(
    calendar: BusinessCalendar, intervals: Sequence[Interval], amount: float
) -> datetime | None:
    """When the working time inside `intervals` adds up to `amount`; None if it never does
    (the last interval ended before). An open last interval runs on into the future."""
    spent = 0.0
    for a, b in intervals:
        if b is None:
            return add_business_seconds(calendar, a, amount - spent)
        here = business_seconds(calendar, a, b)
        if spent + here >= amount:
            return add_business_seconds(calendar, a, amount - spent)
        spent += here
    return None
