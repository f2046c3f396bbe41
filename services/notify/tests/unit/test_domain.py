"""Webhook rules without I/O: event type patterns, endpoint validation, what an answer means,
the retry schedule with its jitter, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm.notify.v1 import notify_pb2
from crmkit import updates
from crmkit.errors import Invalid
from trellis_notify import domain, signing
from trellis_notify.domain import Answer, Outcome, RetryPolicy, WebhookFields

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (["*"], "crm.contacts.contact.created.v1", True),
        (["crm.contacts.*"], "crm.contacts.contact.created.v1", True),
        (["crm.contacts.*"], "crm.sales.deal.won.v1", False),
        (["*.created.v1"], "crm.sales.deal.created.v1", True),
        (["*.created.v1"], "crm.sales.deal.created.v2", False),
        (["crm.sales.deal.won.v1"], "crm.sales.deal.won.v1", True),
        (["crm.sales.deal.won.v1"], "crm.sales.deal.won.v10", False),
        (["crm.sales.deal"], "crm.sales.deal.won.v1", False),
        (["crm.sales.*", "crm.support.ticket.*"], "crm.support.ticket.sla_breached.v1", True),
        ([], "crm.sales.deal.won.v1", False),
        (["crm.contacts.contact.created.v1"], "crmXcontacts.contact.created.v1", False),
    ],
)
def test_event_type_patterns(patterns: list[str], event_type: str, expected: bool) -> None:
    assert domain.matches(patterns, event_type) is expected


def test_endpoints_are_normalised_and_checked() -> None:
    draft = WebhookFields(
        url=" https://partner.example/hooks ",
        description="  Sync  ",
        event_types=("crm.contacts.*", " crm.contacts.* ", "*"),
    )
    got = domain.normalize_webhook(draft, domain.WRITABLE, allow_private=False)
    assert got.url == "https://partner.example/hooks"
    assert got.description == "Sync"
    assert got.event_types == ("crm.contacts.*", "*")
    with pytest.raises(Invalid) as err:
        domain.normalize_webhook(
            WebhookFields(url="https://10.0.0.1/x", event_types=("*",)), {"url"}, False
        )
    assert err.value.violations == [("webhook.url", "10.0.0.1 is a private address")]
    # Fields outside the mask are not judged.
    assert domain.normalize_webhook(WebhookFields(url="nope"), {"description"}, False).url == "nope"


def test_masks_drop_output_only_fields_and_refuse_unknown_ones() -> None:
    def resolve_mask(paths: list[str]) -> list[str]:
        return updates.mask_paths(paths, notify_pb2.Webhook(), domain.WRITABLE)

    assert resolve_mask(["url", "id", "etag", "url"]) == ["url"]
    with pytest.raises(Invalid):
        resolve_mask(["secret_sauce"])


def _policy(jitter: float = 0.0, factor: float = 1.0) -> RetryPolicy:
    return RetryPolicy(
        (5, 300, 1800), jitter, uniform=lambda low, high: low + (high - low) * factor
    )


@pytest.mark.parametrize(
    ("status", "outcome", "state"),
    [
        (200, Outcome.DELIVERED, "delivered"),
        (204, Outcome.DELIVERED, "delivered"),
        (410, Outcome.DISABLED, "failed"),
        (400, Outcome.FAILED, "failed"),
        (401, Outcome.FAILED, "failed"),
        (302, Outcome.FAILED, "failed"),
        (408, Outcome.FAILED, "pending"),
        (429, Outcome.FAILED, "pending"),
        (500, Outcome.FAILED, "pending"),
        (503, Outcome.FAILED, "pending"),
        (0, Outcome.FAILED, "pending"),
    ],
)
def test_what_an_answer_means(status: int, outcome: Outcome, state: str) -> None:
    verdict = _policy().judge(Answer(status=status), 1, AT)
    assert (verdict.outcome, verdict.status) == (outcome, state)
    assert bool(verdict.disable_reason) is (status == 410)


def test_the_schedule_then_the_dead_letter() -> None:
    policy = _policy()
    dues = [policy.judge(Answer(status=500), n, AT).next_attempt_at for n in (1, 2, 3)]
    assert dues == [AT + timedelta(seconds=s) for s in (5, 300, 1800)]
    last = policy.judge(Answer(status=500), 4, AT)
    assert (last.outcome, last.status, last.next_attempt_at) == (Outcome.GAVE_UP, "dead", None)


def test_jitter_stays_within_its_share_both_ways() -> None:
    low = _policy(0.1, factor=0.0).judge(Answer(status=500), 2, AT).next_attempt_at
    high = _policy(0.1, factor=1.0).judge(Answer(status=500), 2, AT).next_attempt_at
    assert (low, high) == (AT + timedelta(seconds=270), AT + timedelta(seconds=330))


def test_retry_after_replaces_the_schedule_for_429_and_503_within_a_day() -> None:
    policy = _policy()
    assert policy.judge(
        Answer(status=429, retry_after=60), 1, AT
    ).next_attempt_at == AT + timedelta(seconds=60)
    assert policy.judge(
        Answer(status=503, retry_after=10**9), 1, AT
    ).next_attempt_at == AT + timedelta(days=1)
    # Any other status keeps the schedule, and the last attempt stays the last.
    assert policy.judge(
        Answer(status=500, retry_after=60), 1, AT
    ).next_attempt_at == AT + timedelta(seconds=5)
    assert policy.judge(Answer(status=429, retry_after=60), 4, AT).status == "dead"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        ("Fri, 02 Jan 2026 03:05:05 GMT", 60.0),
        ("Fri, 02 Jan 2026 03:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
    ],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert domain.retry_after_seconds(header, AT) == seconds


def test_signing_secrets_last_while_the_overlap_lasts() -> None:
    hook = domain.Webhook(
        id="w",
        fields=WebhookFields(),
        disabled_reason="",
        secret="whsec_new",
        previous_secret="whsec_old",
        previous_secret_expires_at=AT,
        version=2,
        etag="e",
        create_time=AT,
        update_time=AT,
    )
    assert hook.signing_secrets(AT - timedelta(seconds=1)) == ["whsec_new", "whsec_old"]
    assert hook.signing_secrets(AT) == ["whsec_new"]


def test_signatures_carry_every_signing_secret() -> None:
    one, two = signing.new_secret(), signing.new_secret()
    assert one != two
    assert one.startswith("whsec_")
    headers = signing.headers("msg_1", AT, b"{}", [one, two])
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(AT.timestamp()))
    assert [s.split(",")[0] for s in headers["webhook-signature"].split(" ")] == ["v1", "v1"]
