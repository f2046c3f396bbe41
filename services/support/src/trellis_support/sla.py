"""Where a ticket stands against the targets of its SLA policy. Pure: the instant to judge at
is an argument (the service passes its injected clock's time), so every answer can be worked
out by hand.

A target's clock runs while the ticket waits on the tenant's team (new or open) and pauses
while it waits on the customer or a third party (pending, on hold) or is solved. Elapsed
time is working time of the policy's calendar inside those running spells, from the target's
start to its completion (or to now). The instants at which the warning share and the whole
target are reached follow from the same spells; while the clock runs they lie ahead, assuming
it keeps running.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from trellis_support.business_hours import (
    BusinessCalendar,
    Interval,
    elapsed_in,
    instant_reaching,
)
from trellis_support.workflow import CLOCK_RUNS, DONE, Status


class Target(StrEnum):
    FIRST_RESPONSE = "first_response"
    NEXT_RESPONSE = "next_response"
    RESOLUTION = "resolution"


class TargetState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    MET = "met"
    BREACHED = "breached"


DEFAULT_WARNING_PERCENT = 80


@dataclass(frozen=True)
class AppliedPolicy:
    """The policy a ticket matched, as it was then: the ticket keeps this copy, so a later edit
    or deletion of the policy does not move the goalposts of tickets already running."""

    policy_id: str
    name: str
    targets: Mapping[Target, int]  # seconds of working time
    warning_percent: int
    calendar: BusinessCalendar


@dataclass(frozen=True)
class ResponseRound:
    """A next-response round: from a customer reply to the next public reply of an agent."""

    number: int  # 1, 2, ...
    start: datetime
    done: datetime | None


@dataclass(frozen=True)
class ClockFacts:
    """What the clocks of one ticket depend on."""

    statuses: Sequence[tuple[datetime, Status]]  # every status since creation, oldest first
    first_response: datetime | None
    next_response: ResponseRound | None  # the latest round

    @property
    def created(self) -> datetime:
        return self.statuses[0][0]

    @property
    def status(self) -> Status:
        return self.statuses[-1][1]

    def solved_at(self) -> datetime | None:
        """When the ticket was last solved, if it is solved or closed now."""
        if self.status not in DONE:
            return None
        return next(at for at, status in reversed(self.statuses) if status is Status.SOLVED)


@dataclass(frozen=True)
class TargetStatus:
    target: Target
    cycle: int  # the next-response round; 0 for the other targets
    target_seconds: int
    start: datetime
    elapsed: float  # working seconds on the clock, up to completion or now
    due_at: datetime | None  # when the target is (or was) reached; None if never while paused
    warning_at: datetime | None
    completed_at: datetime | None
    state: TargetState

    @property
    def key(self) -> tuple[Target, int]:
        return self.target, self.cycle


def running_spells(
    statuses: Sequence[tuple[datetime, Status]], start: datetime, stop: datetime | None
) -> list[Interval]:
    """The spells in which the clock runs, cut to [start, stop); the last is open (None) when
    the ticket's clock runs now and nothing stopped it."""
    spells: list[Interval] = []
    for i, (at, status) in enumerate(statuses):
        if status not in CLOCK_RUNS:
            continue
        end = statuses[i + 1][0] if i + 1 < len(statuses) else None
        if stop is not None:
            end = stop if end is None else min(end, stop)
        a = max(at, start)
        if end is None or a < end:
            spells.append((a, end))
    return spells


def warning_seconds(policy: AppliedPolicy, target_seconds: int) -> int:
    return target_seconds * policy.warning_percent // 100


def _status(
    policy: AppliedPolicy,
    facts: ClockFacts,
    now: datetime,
    target: Target,
    cycle: int,
    start: datetime,
    completed: datetime | None,
    breached: bool,
) -> TargetStatus:
    seconds = policy.targets[target]
    spells = running_spells(facts.statuses, start, completed)
    elapsed = elapsed_in(policy.calendar, spells, completed or now)
    due = instant_reaching(policy.calendar, spells, seconds)
    warning = instant_reaching(policy.calendar, spells, warning_seconds(policy, seconds))
    if breached or elapsed >= seconds:
        state = TargetState.BREACHED
    elif completed is not None:
        state = TargetState.MET
    elif spells and spells[-1][1] is None:
        state = TargetState.RUNNING
    else:
        state = TargetState.PAUSED
    if completed is not None:
        due = warning = None
    return TargetStatus(target, cycle, seconds, start, elapsed, due, warning, completed, state)


def evaluate(
    policy: AppliedPolicy,
    facts: ClockFacts,
    now: datetime,
    fired_breaches: Collection[tuple[Target, int]] = (),
) -> list[TargetStatus]:
    """The status of every target of `policy` that applies to the ticket now.

    `fired_breaches` are the targets a breach event already went out for: they stay breached
    whatever happened since (a target that passed cannot be met later).
    """
    found: list[TargetStatus] = []
    for target in Target:
        if target not in policy.targets:
            continue
        cycle, start, completed = 0, facts.created, None
        if target is Target.FIRST_RESPONSE:
            completed = facts.first_response
        elif target is Target.RESOLUTION:
            completed = facts.solved_at()
        elif facts.next_response is None:
            continue  # no customer reply after the first response yet
        else:
            rnd = facts.next_response
            cycle, start, completed = rnd.number, rnd.start, rnd.done
        breached = (target, cycle) in fired_breaches
        found.append(_status(policy, facts, now, target, cycle, start, completed, breached))
    return found
