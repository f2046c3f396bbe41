"""Protobuf <-> domain values: the api maps requests and replies with it, the stores events."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Generic, TypeVar

from google.protobuf import duration_pb2

from crm.contacts.v1 import contacts_pb2
from crm.support.v1 import support_pb2 as pb
from crmkit.errors import Invalid
from crmkit.protomap import custom_from_proto, custom_to_proto, known_enum, proto_name, stamp
from trellis_support.business_hours import MINUTES_PER_DAY, BusinessCalendar
from trellis_support.domain import (
    AuthorType,
    Channel,
    Comment,
    CommentDraft,
    ContactFacts,
    Priority,
    TicketFields,
    TicketView,
    Visibility,
)
from trellis_support.kb import Article, ArticleFields, ArticleStatus
from trellis_support.policies import Conditions, HoursDraft, PolicyDraft, SlaPolicy
from trellis_support.report_store import Report, Times
from trellis_support.sla import Target, TargetState, TargetStatus
from trellis_support.workflow import DONE, Status

E = TypeVar("E", bound=Enum)


class EnumMap(Generic[E]):
    """A proto enum and its domain enum, bound once so call sites name neither the prefix nor
    the proto type."""

    def __init__(
        self,
        name_of: Callable[[int], str],
        value_of: Callable[[str], int],
        prefix: str,
        kind: type[E],
    ) -> None:
        self._name_of, self._value_of, self._prefix, self._kind = name_of, value_of, prefix, kind

    def from_proto(self, number: int, path: str) -> E | None:
        return known_enum(self._name_of, number, self._prefix, self._kind, path)

    def members(self, numbers: Iterable[int], path: str) -> tuple[E, ...]:
        """The members of a repeated enum field, where UNSPECIFIED means nothing."""
        found = []
        for i, number in enumerate(numbers):
            member = self.from_proto(number, f"{path}[{i}]")
            if member is None:
                raise Invalid([(f"{path}[{i}]", "must be a value, not UNSPECIFIED")])
            found.append(member)
        return tuple(found)

    def to_proto(self, member: E | None) -> Any:
        # Any: each proto enum has a ValueType of its own (a NewType of int).
        return self._value_of(proto_name(member, self._prefix))


def _enum(wrapper: object, prefix: str, kind: type[E]) -> EnumMap[E]:
    return EnumMap(wrapper.Name, wrapper.Value, prefix, kind)  # type: ignore[attr-defined]


PRIORITY = _enum(pb.Priority, "PRIORITY_", Priority)
STATUS = _enum(pb.TicketStatus, "TICKET_STATUS_", Status)
CHANNEL = _enum(pb.Channel, "CHANNEL_", Channel)
VISIBILITY = _enum(pb.CommentVisibility, "COMMENT_VISIBILITY_", Visibility)
AUTHOR = _enum(pb.AuthorType, "AUTHOR_TYPE_", AuthorType)
TARGET = _enum(pb.SlaTarget, "SLA_TARGET_", Target)
TARGET_STATE = _enum(pb.SlaTargetState, "SLA_TARGET_STATE_", TargetState)
ARTICLE_STATUS = _enum(pb.ArticleStatus, "ARTICLE_STATUS_", ArticleStatus)


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(target: duration_pb2.Duration, seconds: float) -> None:
    # Whole milliseconds: enough for business time, and a stable JSON form ("3600s", "1.5s").
    target.FromTimedelta(timedelta(milliseconds=round(seconds * 1000)))


# --- tickets ----------------------------------------------------------------------------------


def ticket_draft(msg: pb.Ticket, path: str = "ticket") -> TicketFields:
    """The writable fields of a ticket as sent, not yet normalised."""
    return TicketFields(
        subject=msg.subject,
        description=msg.description,
        contact_id=msg.contact_id,
        company_id=msg.company_id,
        priority=PRIORITY.from_proto(msg.priority, f"{path}.priority"),
        channel=CHANNEL.from_proto(msg.channel, f"{path}.channel"),
        assignee_id=msg.assignee_id,
        team=msg.team,
        tags=tuple(msg.tags),
        custom_fields=custom_from_proto(msg.custom_fields),
    )


def target_to_proto(status: TargetStatus) -> pb.SlaTargetStatus:
    msg = pb.SlaTargetStatus(
        target=TARGET.to_proto(status.target),
        cycle=status.cycle,
        state=TARGET_STATE.to_proto(status.state),
    )
    _duration(msg.target_duration, status.target_seconds)
    _duration(msg.elapsed, status.elapsed)
    stamp(msg.start_time, status.start)
    stamp(msg.due_time, status.due_at)
    stamp(msg.warning_time, status.warning_at)
    stamp(msg.completed_time, status.completed_at)
    return msg


def ticket_to_proto(view: TicketView, now: datetime) -> pb.Ticket:
    """The ticket with its SLA status as of `now`."""
    t = view.ticket
    f = t.fields
    msg = pb.Ticket(
        id=t.id,
        subject=f.subject,
        description=f.description,
        contact_id=f.contact_id,
        company_id=f.company_id,
        priority=PRIORITY.to_proto(f.priority),
        status=STATUS.to_proto(t.status),
        channel=CHANNEL.to_proto(f.channel),
        assignee_id=f.assignee_id,
        team=f.team,
        tags=f.tags,
        contact_name=t.contact_name,
        contact_email=t.contact_email,
        version=t.version,
        etag=t.etag,
    )
    custom_to_proto(f.custom_fields, msg.custom_fields)
    if t.policy is not None:
        msg.sla.policy_id = t.policy.policy_id
        msg.sla.policy_name = t.policy.name
        msg.sla.targets.extend(target_to_proto(s) for s in view.sla(now))
    stamp(msg.first_response_time, t.first_response)
    stamp(msg.solved_time, t.solved)
    if t.satisfaction is not None:
        msg.satisfaction.rating = t.satisfaction.rating
        msg.satisfaction.comment = t.satisfaction.comment
        msg.satisfaction.create_time.FromDatetime(t.satisfaction.at)
    stamp(msg.create_time, t.create_time)
    stamp(msg.update_time, t.update_time)
    return msg


def contact_facts(contact: contacts_pb2.Contact) -> ContactFacts:
    """What support keeps of a contact the contacts service returned."""
    return ContactFacts(
        contact_id=contact.id,
        name=" ".join(n for n in (contact.first_name, contact.last_name) if n),
        email=contact.emails[0] if contact.emails else "",
        company_id=contact.company_id,
        version=contact.version,
    )


# --- comments ---------------------------------------------------------------------------------


def comment_draft(msg: pb.Comment) -> CommentDraft:
    return CommentDraft(
        body=msg.body,
        visibility=VISIBILITY.from_proto(msg.visibility, "comment.visibility") or Visibility.PUBLIC,
        author_type=AUTHOR.from_proto(msg.author_type, "comment.author_type") or AuthorType.AGENT,
        author_id=msg.author_id,
    )


def comment_to_proto(comment: Comment) -> pb.Comment:
    msg = pb.Comment(
        id=comment.id,
        ticket_id=comment.ticket_id,
        body=comment.body,
        visibility=VISIBILITY.to_proto(comment.visibility),
        author_type=AUTHOR.to_proto(comment.author_type),
        author_id=comment.author_id,
    )
    msg.create_time.FromDatetime(comment.create_time)
    return msg


# --- SLA policies -----------------------------------------------------------------------------

_DAYS = 7


def _clock_text(minutes: int) -> str:
    return "24:00" if minutes == MINUTES_PER_DAY else f"{minutes // 60:02d}:{minutes % 60:02d}"


def _hours_draft(msg: pb.BusinessHours) -> HoursDraft:
    weekly = tuple((w.day - 1 if 0 < w.day <= _DAYS else None, w.start, w.end) for w in msg.weekly)
    return HoursDraft(
        time_zone=msg.time_zone,
        weekly=weekly,
        holidays=tuple(msg.holidays),
        holiday_country=msg.holiday_country,
        holiday_subdivision=msg.holiday_subdivision,
    )


def policy_draft(msg: pb.SlaPolicy, path: str = "sla_policy") -> PolicyDraft:
    cond = msg.conditions
    targets = {
        target: _seconds(getattr(msg.targets, target.value))
        for target in Target
        if msg.targets.HasField(target.value)
    }
    return PolicyDraft(
        name=msg.name,
        position=msg.position,
        conditions=Conditions(
            priorities=PRIORITY.members(cond.priorities, f"{path}.conditions.priorities"),
            channels=CHANNEL.members(cond.channels, f"{path}.conditions.channels"),
            tags=tuple(cond.tags),
            company_ids=tuple(cond.company_ids),
        ),
        targets=targets,
        warning_percent=msg.warning_percent,
        business_hours=_hours_draft(msg.business_hours) if msg.HasField("business_hours") else None,
    )


def _hours_to_proto(calendar: BusinessCalendar, target: pb.BusinessHours) -> None:
    target.time_zone = calendar.time_zone
    for w in calendar.windows:
        target.weekly.add(
            day=w.weekday + 1,
            start=_clock_text(w.start),
            end=_clock_text(w.end),
        )
    target.holidays.extend(d.isoformat() for d in sorted(calendar.days_off))
    target.holiday_country = calendar.holiday_country
    target.holiday_subdivision = calendar.holiday_subdivision


def policy_to_proto(policy: SlaPolicy) -> pb.SlaPolicy:
    f = policy.fields
    msg = pb.SlaPolicy(
        id=policy.id,
        name=f.name,
        position=f.position,
        warning_percent=f.warning_percent,
        version=policy.version,
        etag=policy.etag,
    )
    msg.conditions.priorities.extend(PRIORITY.to_proto(p) for p in f.conditions.priorities)
    msg.conditions.channels.extend(CHANNEL.to_proto(c) for c in f.conditions.channels)
    msg.conditions.tags.extend(f.conditions.tags)
    msg.conditions.company_ids.extend(f.conditions.company_ids)
    for target, seconds in f.targets.items():
        _duration(getattr(msg.targets, target.value), seconds)
    if f.business_hours is not None:
        _hours_to_proto(f.business_hours, msg.business_hours)
    msg.create_time.FromDatetime(policy.create_time)
    msg.update_time.FromDatetime(policy.update_time)
    return msg


# --- articles ---------------------------------------------------------------------------------


def article_draft(msg: pb.Article) -> ArticleFields:
    return ArticleFields(
        title=msg.title,
        body=msg.body,
        status=ARTICLE_STATUS.from_proto(msg.status, "article.status"),
        locale=msg.locale,
        tags=tuple(msg.tags),
    )


def article_to_proto(article: Article) -> pb.Article:
    f = article.fields
    msg = pb.Article(
        id=article.id,
        title=f.title,
        body=f.body,
        status=ARTICLE_STATUS.to_proto(f.status),
        locale=f.locale,
        tags=f.tags,
        version=article.version,
        etag=article.etag,
    )
    msg.create_time.FromDatetime(article.create_time)
    msg.update_time.FromDatetime(article.update_time)
    stamp(msg.publish_time, article.publish_time)
    return msg


# --- reports ----------------------------------------------------------------------------------


def _times_to_proto(times: Times) -> pb.ResponseTimes:
    msg = pb.ResponseTimes(
        group=times.group, tickets=times.tickets, responded=times.responded, resolved=times.resolved
    )
    for name in (
        "first_response_median",
        "first_response_p90",
        "resolution_median",
        "resolution_p90",
    ):
        seconds = getattr(times, name)
        if seconds is not None:
            _duration(getattr(msg, name), seconds)
    return msg


def report_to_proto(report: Report, start: datetime, end: datetime) -> pb.SupportReport:
    msg = pb.SupportReport(
        by_priority=[
            _times_to_proto(replace(t, group=Priority(t.group).name)) for t in report.by_priority
        ],
        by_team=[_times_to_proto(t) for t in report.by_team],
        sla_compliance=[
            pb.SlaCompliance(
                target=TARGET.to_proto(c.target),
                met=c.met,
                breached=c.breached,
                compliance=c.met / (c.met + c.breached) if c.met + c.breached else 0.0,
            )
            for c in report.compliance
        ],
        backlog=[
            pb.StatusCount(status=STATUS.to_proto(s), tickets=report.backlog.get(s, 0))
            for s in Status
            if s not in DONE
        ],
    )
    msg.start_time.FromDatetime(start)
    msg.end_time.FromDatetime(end)
    msg.csat.ratings = report.ratings
    msg.csat.average = report.rating_average
    return msg
