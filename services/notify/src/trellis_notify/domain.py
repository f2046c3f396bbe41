"""Notify's rules for webhooks: endpoint validation, event type patterns, what an answer means
for a delivery and when to try again. No I/O.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from functools import cache
from typing import Any

from crmkit import contactinfo, text, updates
from crmkit.errors import Invalid, Violation
from trellis_notify import ssrf

# Lower-case CloudEvents type characters, and "*" matching any run of them (dots included).
_PATTERN = re.compile(r"[a-z0-9_.*]+")


@dataclass(frozen=True)
class WebhookFields:
    """What a client may write on a webhook endpoint."""

    url: str = ""
    description: str = ""
    event_types: tuple[str, ...] = ()
    disabled: bool = False


@dataclass(frozen=True)
class Webhook:
    id: str
    fields: WebhookFields
    disabled_reason: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    version: int
    etag: str
    create_time: datetime
    update_time: datetime

    def signing_secrets(self, at: datetime) -> list[str]:
        """The secrets that sign at `at`: the current one, and the previous one while it lasts."""
        found = [self.secret]
        expires = self.previous_secret_expires_at
        if self.previous_secret and expires is not None and at < expires:
            found.append(self.previous_secret)
        return found


WRITABLE = updates.writable_paths(WebhookFields)


def normalize_webhook(
    draft: WebhookFields, paths: Collection[str], allow_private: bool
) -> WebhookFields:
    """Trim and check the fields named in `paths`; raise Invalid naming every bad one."""
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    if "url" in paths:
        url = draft.url.strip()
        if not url:
            out.append(("webhook.url", "must not be empty"))
        else:
            try:
                ssrf.check_url(url, allow_private)
            except ssrf.AddressRefusedError as err:
                out.append(("webhook.url", str(err)))
        changes["url"] = url
    if "description" in paths:
        changes["description"] = text.one_line(draft.description, "webhook.description", out)
    if "event_types" in paths:
        changes["event_types"] = patterns(draft.event_types, "webhook.event_types", out)
    if out:
        raise Invalid(out)
    return replace(draft, **changes)


def pattern(value: str, path: str, out: list[Violation]) -> str:
    """One CloudEvents type pattern, trimmed and checked."""
    value = value.strip()
    if not _PATTERN.fullmatch(value):
        out.append((path, "lower-case letters, digits, '_', '.' and '*' only, not empty"))
    return value


def patterns(values: Sequence[str], path: str, out: list[Violation]) -> tuple[str, ...]:
    if not values:
        out.append((path, 'needs at least one event type pattern, e.g. "*" for every event'))
    kept: list[str] = []
    for i, raw in enumerate(values):
        found = pattern(raw, f"{path}[{i}]", out)
        if found not in kept:
            kept.append(found)
    return tuple(kept)


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def matches(patterns: Collection[str], event_type: str) -> bool:
    """Whether a CloudEvents type matches any of the patterns ("*" matches any run)."""
    return any(_compiled(p).fullmatch(event_type) for p in patterns)


# --- answers and retries ------------------------------------------------------------------------


class Outcome(StrEnum):
    """What one attempt led to (also the `outcome` label of the deliveries metric)."""

    DELIVERED = "delivered"
    FAILED = "failed"  # failed; retried later, unless the answer says a retry cannot help
    GAVE_UP = "gave_up"  # the last attempt of the schedule failed: dead-lettered
    DISABLED = "disabled"  # 410 Gone: the endpoint is disabled


@dataclass(frozen=True)
class Answer:
    """What came back from one POST: a status (0 when there was none) and why it failed."""

    status: int = 0
    error: str = ""
    retry_after: float | None = None  # seconds, from a Retry-After header
    latency_ms: int = 0
    snippet: str = ""


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    status: str  # the delivery's new status: delivered, pending, failed, dead
    next_attempt_at: datetime | None = None
    disable_reason: str = ""


_RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """The delays between attempts (NOTIFY_WEBHOOK_RETRY_SCHEDULE), each varied by up to
    `jitter` both ways so that endpoints that failed together are not retried together."""

    schedule: tuple[float, ...]
    jitter: float = 0.1
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False)
    # The longest Retry-After honoured: a day, as the schedule's longest step.
    max_retry_after: float = 86400.0

    def delay(self, attempts: int, retry_after: float | None) -> float | None:
        """Seconds until the next attempt after `attempts` failed ones; None: no more."""
        if attempts > len(self.schedule):
            return None
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = self.schedule[attempts - 1]
        return base * self.uniform(1 - self.jitter, 1 + self.jitter)

    def judge(self, answer: Answer, attempts: int, at: datetime) -> Verdict:
        """The delivery's fate after attempt number `attempts` got `answer`."""
        status = answer.status
        if 200 <= status < 300:
            return Verdict(Outcome.DELIVERED, "delivered")
        if status == 410:
            return Verdict(
                Outcome.DISABLED, "failed", disable_reason="the endpoint answered 410 Gone"
            )
        retryable = status == 0 or status >= 500 or status in _RETRYABLE_4XX
        if not retryable:
            return Verdict(Outcome.FAILED, "failed")
        delay = self.delay(attempts, answer.retry_after if status in (429, 503) else None)
        if delay is None:
            return Verdict(Outcome.GAVE_UP, "dead")
        return Verdict(Outcome.FAILED, "pending", next_attempt_at=at + timedelta(seconds=delay))


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from `now`."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)


# --- mail -------------------------------------------------------------------------------------

# Enough to refuse what cannot be an address; contacts validates the addresses it stores.
_EMAIL = re.compile(r"[^\s@\x00-\x1f\x7f]{1,64}@[^\s@\x00-\x1f\x7f]+\.[^\s@\x00-\x1f\x7f]+")


def email_address(value: str, path: str, out: list[Violation]) -> str:
    value = value.strip()
    if not _EMAIL.fullmatch(value):
        out.append((path, "not a valid email address"))
    return value


def purpose(value: str, path: str, out: list[Violation], *, required: bool = False) -> str:
    value = value.strip()
    if (value or required) and not contactinfo.is_purpose(value):
        out.append((path, "1-64 lower-case letters, digits or underscores, e.g. marketing_email"))
    return value


def suppression(email: str, purpose_: str, detail: str, prefix: str) -> tuple[str, str, str]:
    out: list[Violation] = []
    email = email_address(email, f"{prefix}.email", out)
    purpose_ = purpose(purpose_, f"{prefix}.purpose", out)
    detail = text.one_line(detail, f"{prefix}.detail", out)
    if out:
        raise Invalid(out)
    return email, purpose_, detail
