"""The service's sense of time, injected: SLA arithmetic and timers read it, so tests can
set it instead of waiting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)
