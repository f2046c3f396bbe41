"""The notify service's own Prometheus metrics (the chassis's are in crmkit.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WEBHOOK_DELIVERIES = Counter(
    "trellis_webhook_deliveries",
    "Webhook delivery attempts, by outcome: delivered, failed (retried unless the answer rules "
    "it out), gave_up (the last attempt failed: dead-lettered), disabled (410 Gone)",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "trellis_webhook_attempt_duration_seconds",
    "Time from sending a webhook to the end of the answer's head",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EMAILS = Counter(
    "trellis_emails",
    "Email send outcomes: sent, retried, bounced, suppressed, failed",
    ["outcome"],
)
