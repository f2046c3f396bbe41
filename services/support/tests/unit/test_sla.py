"""Where a ticket stands against its targets: pauses, completions, rounds, warnings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from trellis_support.business_hours import BusinessCalendar, Window
from trellis_support.sla import (
    AppliedPolicy,
    ClockFacts,
    ResponseRound,
    Target,
    TargetState,
    TargetStatus,
    evaluate,
)
from trellis_support.workflow import Status

HOUR = 3600
T0 = datetime(2024, 6, 17, 9, tzinfo=UTC)  # a Monday


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def policy(calendar: BusinessCalendar | None = None, **targets: int) -> AppliedPolicy:
    return AppliedPolicy(
        policy_id="p",
        name="Standard",
        targets={Target(k): v for k, v in targets.items()},
        warning_percent=80,
        calendar=calendar or BusinessCalendar(),
    )


def facts(
    *statuses: tuple[float, Status],
    first_response: float | None = None,
    next_response: ResponseRound | None = None,
) -> ClockFacts:
    return ClockFacts(
        statuses=[(at(h), s) for h, s in statuses],
        first_response=at(first_response) if first_response is not None else None,
        next_response=next_response,
    )


def only(found: list[TargetStatus], target: Target) -> TargetStatus:
    (status,) = [s for s in found if s.target is target]
    return status


def test_the_clock_pauses_while_pending_and_on_hold() -> None:
    p = policy(first_response=4 * HOUR)
    history = facts(
        (0, Status.NEW),
        (1, Status.PENDING),
        (3, Status.OPEN),
        (4, Status.ON_HOLD),
        (5, Status.OPEN),
    )
    # Running 0-1, 3-4 and from 5: at 6 h, 3 h have elapsed; 1 h remains, due at 7 h.
    status = only(evaluate(p, history, at(6)), Target.FIRST_RESPONSE)
    assert status.elapsed == 3 * HOUR
    assert status.state is TargetState.RUNNING
    assert status.due_at == at(7)
    # 80 % (3.2 h) was reached at 6.2 h.
    assert status.warning_at == at(6.2)

    # At 2 h (pending) the clock shows 1 h and no due time: nobody knows when it resumes.
    paused = only(
        evaluate(p, facts((0, Status.NEW), (1, Status.PENDING)), at(2)), Target.FIRST_RESPONSE
    )
    assert (paused.elapsed, paused.state, paused.due_at) == (HOUR, TargetState.PAUSED, None)


def test_met_and_breached_first_responses() -> None:
    p = policy(first_response=2 * HOUR)
    met = only(
        evaluate(p, facts((0, Status.NEW), (1.5, Status.OPEN), first_response=1.5), at(9)),
        Target.FIRST_RESPONSE,
    )
    assert (met.state, met.elapsed, met.completed_at, met.due_at) == (
        TargetState.MET,
        1.5 * HOUR,
        at(1.5),
        None,
    )
    late = only(evaluate(p, facts((0, Status.NEW), first_response=3), at(9)), Target.FIRST_RESPONSE)
    assert (late.state, late.elapsed) == (TargetState.BREACHED, 3 * HOUR)
    running_late = only(evaluate(p, facts((0, Status.NEW)), at(2.5)), Target.FIRST_RESPONSE)
    assert running_late.state is TargetState.BREACHED
    assert running_late.due_at == at(2)  # when it passed


def test_a_fired_breach_stays_breached() -> None:
    p = policy(first_response=2 * HOUR)
    # The policy's target was shorter when the breach went out; now it would be met.
    found = evaluate(
        p, facts((0, Status.NEW), first_response=1), at(3), {(Target.FIRST_RESPONSE, 0)}
    )
    assert only(found, Target.FIRST_RESPONSE).state is TargetState.BREACHED


def test_resolution_stops_while_solved_and_continues_when_reopened() -> None:
    p = policy(resolution=8 * HOUR)
    history = facts((0, Status.NEW), (2, Status.SOLVED), (5, Status.OPEN))
    status = only(evaluate(p, history, at(6)), Target.RESOLUTION)
    assert status.elapsed == 3 * HOUR  # 0-2 and 5-6
    assert status.state is TargetState.RUNNING
    assert status.due_at == at(11)
    solved = only(evaluate(p, facts((0, Status.NEW), (2, Status.SOLVED)), at(6)), Target.RESOLUTION)
    assert (solved.state, solved.completed_at, solved.elapsed) == (
        TargetState.MET,
        at(2),
        2 * HOUR,
    )
    closed = facts((0, Status.NEW), (2, Status.SOLVED), (3, Status.CLOSED))
    assert only(evaluate(p, closed, at(6)), Target.RESOLUTION).completed_at == at(2)


def test_next_response_rounds() -> None:
    p = policy(first_response=HOUR, next_response=2 * HOUR)
    history = (0, Status.NEW), (0.5, Status.OPEN)
    # No customer reply since the first response: no next-response target yet.
    assert [s.target for s in evaluate(p, facts(*history, first_response=0.5), at(1))] == [
        Target.FIRST_RESPONSE
    ]
    waiting = ResponseRound(2, at(3), None)
    status = only(
        evaluate(p, facts(*history, first_response=0.5, next_response=waiting), at(4)),
        Target.NEXT_RESPONSE,
    )
    assert (status.cycle, status.start, status.elapsed, status.due_at) == (2, at(3), HOUR, at(5))
    answered = ResponseRound(2, at(3), at(5.5))
    status = only(
        evaluate(p, facts(*history, first_response=0.5, next_response=answered), at(6)),
        Target.NEXT_RESPONSE,
    )
    assert (status.state, status.elapsed) == (TargetState.BREACHED, 2.5 * HOUR)


def test_business_hours_apply_to_the_clocks() -> None:
    office = BusinessCalendar(
        time_zone="UTC", windows=tuple(Window(d, 9 * 60, 17 * 60) for d in range(5))
    )
    p = policy(office, first_response=4 * HOUR)
    # Created Friday 2024-06-21 15:00 UTC: 2 h on Friday, due Monday 11:00.
    friday = datetime(2024, 6, 21, 15, tzinfo=UTC)
    history = ClockFacts([(friday, Status.NEW)], None, None)
    status = only(evaluate(p, history, friday + timedelta(days=2)), Target.FIRST_RESPONSE)
    assert status.elapsed == 2 * HOUR
    assert status.due_at == datetime(2024, 6, 24, 11, tzinfo=UTC)
    assert status.state is TargetState.RUNNING  # the clock runs; the office is just closed
