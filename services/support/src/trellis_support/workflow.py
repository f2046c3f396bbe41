"""The ticket workflow, declared once: the statuses, which moves are allowed, and what a move
is called (the event it makes). No I/O."""

from __future__ import annotations

from enum import StrEnum

from crmkit.errors import FailedPrecondition


class Status(StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"  # waiting on the customer
    ON_HOLD = "on_hold"  # waiting on a third party
    SOLVED = "solved"
    CLOSED = "closed"


# Where each status may go. SOLVED -> OPEN is a reopening; CLOSED is final.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.OPEN, Status.PENDING, Status.ON_HOLD, Status.SOLVED}),
    Status.OPEN: frozenset({Status.PENDING, Status.ON_HOLD, Status.SOLVED}),
    Status.PENDING: frozenset({Status.OPEN, Status.ON_HOLD, Status.SOLVED}),
    Status.ON_HOLD: frozenset({Status.OPEN, Status.PENDING, Status.SOLVED}),
    Status.SOLVED: frozenset({Status.OPEN, Status.CLOSED}),
    Status.CLOSED: frozenset(),
}

# The SLA clocks run only while the ticket waits on the tenant's team.
CLOCK_RUNS = frozenset({Status.NEW, Status.OPEN})
DONE = frozenset({Status.SOLVED, Status.CLOSED})


class Move(StrEnum):
    """What a status change is called; each is one kind of event."""

    STATUS_CHANGED = "status_changed"
    SOLVED = "solved"
    REOPENED = "reopened"


def check_transition(current: Status, target: Status) -> Move:
    """The kind of a move the workflow allows; FailedPrecondition naming the allowed ones
    otherwise (HTTP 409)."""
    allowed = TRANSITIONS[current]
    if target not in allowed:
        names = ", ".join(s.name for s in sorted(allowed, key=list(Status).index)) or "none"
        raise FailedPrecondition(
            f"the ticket is {current.name} and cannot become {target.name}; allowed: {names}",
            "status",
        )
    if target is Status.SOLVED:
        return Move.SOLVED
    if current in DONE and target not in DONE:
        return Move.REOPENED
    return Move.STATUS_CHANGED
