"""The support service's own Prometheus metrics (the chassis serves them with its own).

The chart's alert TrellisSlaBreachRateHigh divides breaches by checks; both count SLA
verdicts: a target that passed (a breach) or that was done in time (met). The `policy` label
names the kind of target, not the tenant's policy, so its values stay few.
"""

from __future__ import annotations

from prometheus_client import Counter

from trellis_support.sla import Target

SLA_BREACHES = Counter(
    "trellis_sla_breaches",
    "SLA targets of tickets that passed before they were done, by kind of target",
    ["policy"],
)
SLA_CHECKED = Counter(
    "trellis_tickets_sla_checked",
    "SLA targets of tickets judged (met in time, or breached)",
)


def label(target: Target) -> str:
    return target.value.replace("_", "-")


def count_verdicts(met: int, breached: list[Target]) -> None:
    """Called once the verdicts are committed."""
    SLA_CHECKED.inc(met + len(breached))
    for target in breached:
        SLA_BREACHES.labels(label(target)).inc()
