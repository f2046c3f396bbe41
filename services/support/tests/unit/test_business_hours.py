"""Business-hours arithmetic on fixed cases, each worked out by hand in the comments."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from trellis_support.business_hours import (
    BusinessCalendar,
    CalendarError,
    Window,
    add_business_seconds,
    business_seconds,
    check_calendar,
    elapsed_in,
    instant_reaching,
)

HOUR = 3600.0


def office(zone: str, **kwargs: object) -> BusinessCalendar:
    """Monday to Friday, 09:00-17:00 local time."""
    windows = tuple(Window(day, 9 * 60, 17 * 60) for day in range(5))
    return BusinessCalendar(time_zone=zone, windows=windows, **kwargs)  # type: ignore[arg-type]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


BERLIN = office("Europe/Berlin")  # CEST = UTC+2 in June and October


def test_across_a_weekend() -> None:
    # Friday 2024-06-14 15:00 CEST: 2 h left that day; Monday 09:00-11:00: 2 more.
    friday_3pm = utc(2024, 6, 14, 13)
    monday_11am = utc(2024, 6, 17, 9)
    assert business_seconds(BERLIN, friday_3pm, monday_11am) == 4 * HOUR
    assert add_business_seconds(BERLIN, friday_3pm, 4 * HOUR) == monday_11am


def test_an_explicit_holiday_is_skipped() -> None:
    calendar = office("Europe/Berlin", days_off=frozenset({date(2024, 6, 17)}))
    # Friday 2 h, Monday off, Tuesday 09:00-11:00 CEST.
    assert add_business_seconds(calendar, utc(2024, 6, 14, 13), 4 * HOUR) == utc(2024, 6, 18, 9)
    assert business_seconds(calendar, utc(2024, 6, 14, 13), utc(2024, 6, 18, 9)) == 4 * HOUR


def test_a_country_holiday_is_skipped() -> None:
    calendar = office("Europe/Berlin", holiday_country="DE")
    # Wednesday 2024-10-02 16:00 CEST: 1 h; Thursday 3 October is German Unity Day;
    # Friday 09:00 + 2 h = 11:00 CEST = 09:00 UTC.
    assert add_business_seconds(calendar, utc(2024, 10, 2, 14), 3 * HOUR) == utc(2024, 10, 4, 9)
    # The same without the country calendar ends on the Thursday.
    assert add_business_seconds(BERLIN, utc(2024, 10, 2, 14), 3 * HOUR) == utc(2024, 10, 3, 9)


def test_a_subdivision_holiday_is_skipped_only_there() -> None:
    # 6 January (Epiphany) is a holiday in Bavaria, not in Berlin. Monday 2025-01-06.
    bavaria = office("Europe/Berlin", holiday_country="DE", holiday_subdivision="BY")
    germany = office("Europe/Berlin", holiday_country="DE")
    friday_4pm = utc(2025, 1, 3, 15)  # CET = UTC+1
    assert add_business_seconds(bavaria, friday_4pm, 2 * HOUR) == utc(2025, 1, 7, 9)
    assert add_business_seconds(germany, friday_4pm, 2 * HOUR) == utc(2025, 1, 6, 9)


def test_working_hours_keep_their_wall_clock_across_a_dst_change() -> None:
    new_york = office("America/New_York")
    # Friday 2024-03-08 16:00 EST (21:00 UTC): 1 h. DST starts Sunday 10 March. Monday
    # 09:00 EDT (13:00 UTC) + 3 h = 12:00 EDT = 16:00 UTC (not 17:00, as a fixed offset
    # would have it).
    friday_4pm = utc(2024, 3, 8, 21)
    assert add_business_seconds(new_york, friday_4pm, 4 * HOUR) == utc(2024, 3, 11, 16)
    assert business_seconds(new_york, friday_4pm, utc(2024, 3, 11, 16)) == 4 * HOUR


def test_a_day_around_the_clock_has_the_hours_dst_gives_it() -> None:
    always = BusinessCalendar(time_zone="America/New_York")
    # Sunday 3 November 2024, clocks go back: midnight EDT (04:00 UTC) to midnight EST (05:00
    # UTC the next day) is 25 hours.
    assert business_seconds(always, utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)) == 25 * HOUR
    berlin = BusinessCalendar(time_zone="Europe/Berlin")
    # Saturday 2024-03-30 22:00 CET (21:00 UTC) + 8 h: 8 real hours later, 05:00 UTC (07:00
    # CEST on the shortened Sunday).
    assert add_business_seconds(berlin, utc(2024, 3, 30, 21), 8 * HOUR) == utc(2024, 3, 31, 5)


def test_a_target_that_starts_outside_business_hours() -> None:
    saturday = utc(2024, 6, 15, 8)  # Saturday 10:00 CEST
    early_monday = utc(2024, 6, 17, 5)  # Monday 07:00 CEST
    monday_9am = utc(2024, 6, 17, 7)
    assert business_seconds(BERLIN, saturday, monday_9am) == 0
    assert business_seconds(BERLIN, early_monday, monday_9am) == 0
    # The clock starts at 09:00 Monday either way: 2 h later is 11:00 CEST.
    assert add_business_seconds(BERLIN, saturday, 2 * HOUR) == utc(2024, 6, 17, 9)
    assert add_business_seconds(BERLIN, early_monday, 2 * HOUR) == utc(2024, 6, 17, 9)
    # An evening start (18:00 CEST) moves to the next morning.
    assert add_business_seconds(BERLIN, utc(2024, 6, 17, 16), HOUR) == utc(2024, 6, 18, 8)


def test_split_days_and_exact_window_ends() -> None:
    lunch_break = BusinessCalendar(
        time_zone="UTC",
        windows=(Window(0, 9 * 60, 12 * 60), Window(0, 13 * 60, 17 * 60)),
    )
    monday = utc(2024, 6, 17, 9)
    # 3 h fill the morning exactly: the answer is the end of the window, not the afternoon.
    assert add_business_seconds(lunch_break, monday, 3 * HOUR) == utc(2024, 6, 17, 12)
    assert add_business_seconds(lunch_break, monday, 3.5 * HOUR) == utc(2024, 6, 17, 13, 30)
    assert business_seconds(lunch_break, monday, utc(2024, 6, 17, 17)) == 7 * HOUR
    # Only Mondays: the next 7 h are a week later.
    assert add_business_seconds(lunch_break, monday, 14 * HOUR) == utc(2024, 6, 24, 17)


def test_spells_add_up_and_an_open_one_runs_on() -> None:
    always = BusinessCalendar()
    spells = [(utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)), (utc(2024, 1, 1, 3), None)]
    assert elapsed_in(always, spells, utc(2024, 1, 1, 4)) == 2 * HOUR
    assert instant_reaching(always, spells, 3 * HOUR) == utc(2024, 1, 1, 5)
    assert instant_reaching(always, spells[:1], 3 * HOUR) is None  # paused for good
    assert instant_reaching(always, spells, 0.5 * HOUR) == utc(2024, 1, 1, 0, 30)


def test_naive_times_and_unknown_calendars_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        business_seconds(BERLIN, datetime(2024, 1, 1), datetime(2024, 1, 2))
    with pytest.raises(CalendarError):
        check_calendar(BusinessCalendar(time_zone="Mars/Olympus_Mons"))
    with pytest.raises(CalendarError):
        check_calendar(BusinessCalendar(holiday_country="QQ"))


def test_a_calendar_without_working_time_ends_the_search() -> None:
    never = BusinessCalendar(windows=(Window(0, 0, 1),), days_off=frozenset())
    # One minute a week: 10 years hold only about 8.7 hours of it.
    with pytest.raises(CalendarError, match="no working time"):
        add_business_seconds(never, utc(2024, 1, 1), timedelta(days=1).total_seconds())
