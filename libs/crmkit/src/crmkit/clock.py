"""The services' sense of time, injected: SLA clocks, retries, decay and expiry read it, so
tests set it instead of waiting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)
