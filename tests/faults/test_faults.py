"""Issue 13's fault suite: creates and stage moves through the gateway from concurrent callers
while NATS, PostgreSQL, each service and the gateway are killed; nothing acknowledged is lost,
nothing unacknowledged is written, every change's event is on the stream once, nothing is left
running or unpublished, and nothing answers 500.

`make test` runs the short form; `make faults WRITES=10000` the long one, printing its table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.platform import Platform, platform
from tests.faults.run import FaultRun

# The short form: a few hundred writes, slow enough that they last through every fault.
WRITES = int(os.environ.get("TRELLIS_FAULT_WRITES", "200"))
RATE = float(os.environ.get("TRELLIS_FAULT_RATE", "10"))


@pytest.fixture
def own_platform(tmp_path: Path) -> Iterator[Platform]:
    with platform(tmp_path) as running:
        yield running


# Ten minutes for the faults, recoveries and checks, plus the writes at their pace, twice.
@pytest.mark.timeout(600 + 2 * WRITES / RATE)
async def test_nothing_acknowledged_is_lost_and_nothing_is_left_behind(
    own_platform: Platform,
) -> None:
    report = await FaultRun(own_platform, WRITES, rate=RATE).run()
    print(f"\n{report.table()}")
    assert report.failures() == {}, report.table()
