"""The sales service's own metrics, beside the chassis's (RED, pool, outbox, consumers)."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter


@cache
def _rescored() -> Counter:
    return Counter(
        "trellis_sales_lead_scores_computed",
        "Lead scores computed and stored, by what caused it (lead, rules, contact, event, decay)",
        ["trigger"],
    )


@cache
def _conversions() -> Counter:
    return Counter(
        "trellis_sales_lead_conversions",
        "Leads converted, by whether the contact was created or an existing one reused",
        ["contact"],
    )


def rescored(trigger: str, count: int) -> None:
    _rescored().labels(trigger).inc(count)


def converted(contact_created: bool) -> None:
    _conversions().labels("created" if contact_created else "reused").inc()
