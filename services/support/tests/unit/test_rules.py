"""The workflow, policy matching and validation rules of tickets, policies and articles."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from crmkit.errors import FailedPrecondition, Invalid
from trellis_support import domain, kb, policies
from trellis_support.domain import AuthorType, Channel, CommentDraft, Priority, TicketFields
from trellis_support.policies import Conditions, HoursDraft, PolicyDraft, PolicyFields, SlaPolicy
from trellis_support.sla import Target
from trellis_support.workflow import TRANSITIONS, Move, Status, check_transition

NOW = datetime(2024, 6, 17, tzinfo=UTC)
CONTACT = "0190a0a0-0000-7000-8000-000000000001"


def violations(exc: pytest.ExceptionInfo[Invalid]) -> dict[str, str]:
    return dict(exc.value.violations)


# --- workflow ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "move"),
    [
        (Status.NEW, Status.OPEN, Move.STATUS_CHANGED),
        (Status.OPEN, Status.SOLVED, Move.SOLVED),
        (Status.PENDING, Status.SOLVED, Move.SOLVED),
        (Status.SOLVED, Status.OPEN, Move.REOPENED),
        (Status.SOLVED, Status.CLOSED, Move.STATUS_CHANGED),
    ],
)
def test_allowed_moves_and_their_names(current: Status, target: Status, move: Move) -> None:
    assert check_transition(current, target) is move


def test_a_disallowed_move_names_the_allowed_ones() -> None:
    with pytest.raises(FailedPrecondition) as err:
        check_transition(Status.OPEN, Status.CLOSED)
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.message == (
        "the ticket is OPEN and cannot become CLOSED; allowed: PENDING, ON_HOLD, SOLVED"
    )
    assert err.value.violations == [("status", err.value.message)]
    with pytest.raises(FailedPrecondition, match="allowed: none"):
        check_transition(Status.CLOSED, Status.OPEN)


def test_every_status_is_in_the_workflow() -> None:
    assert set(TRANSITIONS) == set(Status)


# --- policies ---------------------------------------------------------------------------------


def _policy(pid: str, **conditions: tuple[object, ...]) -> SlaPolicy:
    fields = PolicyFields(
        name=pid,
        conditions=Conditions(**conditions),  # type: ignore[arg-type]
        targets={Target.FIRST_RESPONSE: 3600},
    )
    return SlaPolicy(pid, fields, 1, "e", NOW, NOW)


def test_the_first_policy_whose_conditions_hold_wins() -> None:
    ordered = [
        _policy("vip", tags=("vip",)),
        _policy("urgent", priorities=(Priority.URGENT,)),
        _policy("chat", channels=(Channel.CHAT, Channel.PHONE), priorities=(Priority.HIGH,)),
        _policy("default"),
    ]

    def match(**fields: object) -> str:
        found = policies.first_match(ordered, TicketFields(**fields))  # type: ignore[arg-type]
        assert found is not None
        return found.id

    # Matched by priority...
    assert match(priority=Priority.URGENT, tags=("billing",)) == "urgent"
    # ...unless an earlier policy matches by tag.
    assert match(priority=Priority.URGENT, tags=("vip", "billing")) == "vip"
    # Every condition must hold: HIGH over email is not the chat policy.
    assert match(priority=Priority.HIGH, channel=Channel.EMAIL) == "default"
    assert match(priority=Priority.HIGH, channel=Channel.PHONE) == "chat"
    assert policies.first_match(ordered[:1], TicketFields(priority=Priority.LOW)) is None


def test_a_company_condition() -> None:
    company = "0190a0a0-0000-7000-8000-00000000000c"
    p = _policy("acme", company_ids=(company,))
    assert p.fields.conditions.hold_for(TicketFields(company_id=company))
    assert not p.fields.conditions.hold_for(TicketFields(company_id=""))


def test_policy_validation_names_every_bad_field() -> None:
    draft = PolicyDraft(
        name="  ",
        targets={Target.FIRST_RESPONSE: 0, Target.RESOLUTION: 1.5},
        conditions=Conditions(company_ids=("acme",)),
        business_hours=HoursDraft(
            time_zone="Mars/Base",
            weekly=(
                (0, "09:00", "17:00"),
                (0, "16:00", "18:00"),
                (None, "9", "25:00"),
                (1, "10:00", "09:00"),
            ),
            holidays=("2024-02-30", "tomorrow"),
            holiday_country="XX",
            holiday_subdivision="ZZ",
        ),
    )
    with pytest.raises(Invalid) as err:
        policies.normalize_policy(draft, list(PolicyFields.__dataclass_fields__))
    assert violations(err) == {
        "sla_policy.name": "must not be empty",
        "sla_policy.targets.first_response": "must be more than 0s and at most a year",
        "sla_policy.targets.resolution": "must be a whole number of seconds",
        "sla_policy.conditions.company_ids[0]": "not a company id",
        "sla_policy.business_hours.time_zone": 'must be an IANA time zone, e.g. "Europe/Berlin"',
        "sla_policy.business_hours.weekly[1]": "overlaps sla_policy.business_hours.weekly[0]",
        "sla_policy.business_hours.weekly[2].start": 'must be a time as "HH:MM"',
        "sla_policy.business_hours.weekly[2].end": 'must be a time as "HH:MM" or "24:00"',
        "sla_policy.business_hours.weekly[2].day": "must be a day of the week",
        "sla_policy.business_hours.weekly[3].end": "must be after the start",
        "sla_policy.business_hours.holidays[0]": 'must be a date as "YYYY-MM-DD"',
        "sla_policy.business_hours.holidays[1]": 'must be a date as "YYYY-MM-DD"',
        "sla_policy.business_hours.holiday_country": "no holiday calendar for this country",
        "sla_policy.business_hours.holiday_subdivision": "needs a holiday_country",
    }


def test_a_policy_needs_a_target_and_a_known_subdivision() -> None:
    with pytest.raises(Invalid) as err:
        policies.normalize_policy(
            PolicyDraft(
                name="x",
                business_hours=HoursDraft(
                    time_zone="UTC", holiday_country="de", holiday_subdivision="XX"
                ),
            ),
            ["name", "targets", "business_hours"],
        )
    assert violations(err) == {
        "sla_policy.targets": "set at least one of first_response, next_response, resolution",
        "sla_policy.business_hours.holiday_subdivision": "no such subdivision of DE",
    }


def test_a_valid_policy_is_normalised() -> None:
    fields = policies.normalize_policy(
        PolicyDraft(
            name=" Gold ",
            targets={Target.RESOLUTION: 7200.0},
            conditions=Conditions(priorities=(Priority.HIGH, Priority.HIGH), tags=(" vip ",)),
            business_hours=HoursDraft(
                time_zone="Europe/Berlin",
                weekly=((4, "09:00", "24:00"),),
                holiday_country="de",
                holiday_subdivision="by",
            ),
        ),
        list(PolicyFields.__dataclass_fields__),
    )
    assert fields.name == "Gold"
    assert fields.targets == {Target.RESOLUTION: 7200}
    assert fields.warning_percent == 80
    assert fields.conditions == Conditions(priorities=(Priority.HIGH,), tags=("vip",))
    assert fields.business_hours is not None
    assert (fields.business_hours.holiday_country, fields.business_hours.holiday_subdivision) == (
        "DE",
        "BY",
    )
    assert fields.business_hours.windows[0].end == 24 * 60


# --- tickets and comments ---------------------------------------------------------------------


def test_ticket_validation() -> None:
    draft = TicketFields(
        subject=" ",
        description="line one\nline two\u202e",
        contact_id="not-an-id",
        company_id="nope",
        tags=("ok", " ", "ok"),
        custom_fields={"Tier": "gold", "score": float("nan"), "nested": ["a"], "n": 1.5},
    )
    with pytest.raises(Invalid) as err:
        domain.new_ticket_fields(draft)
    assert violations(err) == {
        "ticket.subject": "must not be empty",
        "ticket.description": "must not contain bidirectional override characters",
        "ticket.contact_id": "no such contact",
        "ticket.company_id": "no such company",
        "ticket.tags[1]": "must not be empty",
        "ticket.custom_fields.Tier": "names are lower-case letters, digits and underscores",
        "ticket.custom_fields.score": "must be a finite number",
        "ticket.custom_fields.nested": "must be a string, a number, a boolean or null",
    }


def test_new_ticket_defaults() -> None:
    fields = domain.new_ticket_fields(
        TicketFields(
            subject=" Printer on fire ",
            description="  It burns.\n\tHelp.  ",
            contact_id=CONTACT.upper(),
            tags=("a", "a"),
            custom_fields={"gone": None, "kept": True},
        )
    )
    assert fields.subject == "Printer on fire"
    assert fields.description == "It burns.\n\tHelp."
    assert fields.contact_id == CONTACT
    assert (fields.priority, fields.channel, fields.tags) == (Priority.NORMAL, Channel.API, ("a",))
    assert fields.custom_fields == {"kept": True}


def test_an_update_keeps_the_contact_and_the_defaults() -> None:
    current = domain.new_ticket_fields(TicketFields(subject="s", contact_id=CONTACT))
    other = "0190a0a0-0000-7000-8000-000000000002"
    with pytest.raises(Invalid) as err:
        domain.normalize_ticket(TicketFields(), ["priority", "channel"], update=True)
    assert violations(err) == {"ticket.priority": "must be set", "ticket.channel": "must be set"}
    with pytest.raises(Invalid) as err:
        domain.finish_update(current, TicketFields(subject="s", contact_id=other))
    assert violations(err) == {"ticket.contact_id": "a ticket stays with the contact who opened it"}


def test_comment_authors() -> None:
    agent = domain.normalize_comment(
        CommentDraft(" Hi ", domain.Visibility.PUBLIC, AuthorType.AGENT, ""), "key:1", CONTACT
    )
    assert (agent.body, agent.author_id) == ("Hi", "key:1")
    contact = domain.normalize_comment(
        CommentDraft("Thanks", domain.Visibility.PUBLIC, AuthorType.CONTACT, ""), "key:1", CONTACT
    )
    assert contact.author_id == CONTACT
    with pytest.raises(Invalid) as err:
        domain.normalize_comment(
            CommentDraft("", domain.Visibility.INTERNAL, AuthorType.CONTACT, "someone"),
            "key:1",
            CONTACT,
        )
    assert violations(err) == {
        "comment.body": "must not be empty",
        "comment.visibility": "the contact can only write public replies",
        "comment.author_id": "a contact's reply is by the ticket's contact",
    }


# --- articles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical", "config"),
    [
        ("en", "en", "english"),
        ("de-at", "de-AT", "german"),
        ("PT-br", "pt-BR", "portuguese"),
        ("zh-hant-tw", "zh-Hant-TW", "simple"),
        ("nb", "nb", "norwegian"),
    ],
)
def test_locales_and_their_search_configurations(given: str, canonical: str, config: str) -> None:
    assert kb.canonical_locale(given) == canonical
    assert kb.search_config(canonical) == config


def test_article_validation_and_defaults() -> None:
    fields = kb.new_article_fields(kb.ArticleFields(title=" Reset ", locale=""))
    assert (fields.title, fields.locale, fields.status) == ("Reset", "en", kb.ArticleStatus.DRAFT)
    with pytest.raises(Invalid) as err:
        kb.new_article_fields(kb.ArticleFields(title="", locale="english!", tags=("",)))
    assert violations(err) == {
        "article.title": "must not be empty",
        "article.locale": 'not a language tag, e.g. "en" or "pt-BR"',
        "article.tags[0]": "must not be empty",
    }
