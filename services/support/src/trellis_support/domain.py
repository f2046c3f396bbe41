"""Tickets' and comments' rules: the records, their validation and normalisation. No I/O.

Validation collects every problem of a request at once and names each by its request path
("ticket.tags[1]"), so a client can fix all fields in one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from crmkit import customvalues, text
from crmkit.errors import Invalid, Violation
from crmkit.ids import canonical_uuid, reference
from trellis_support.sla import (
    AppliedPolicy,
    ClockFacts,
    ResponseRound,
    Target,
    TargetStatus,
    evaluate,
)
from trellis_support.workflow import Status


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Channel(StrEnum):
    EMAIL = "email"
    WEB = "web"
    PHONE = "phone"
    CHAT = "chat"
    API = "api"


class Visibility(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"


class AuthorType(StrEnum):
    AGENT = "agent"
    CONTACT = "contact"


@dataclass(frozen=True)
class TicketFields:
    """What a client may write on a ticket; drafts and stored tickets share the shape."""

    subject: str = ""
    description: str = ""
    contact_id: str = ""
    company_id: str = ""  # "" when none
    priority: Priority | None = None  # None in a draft: the default (NORMAL) on create
    channel: Channel | None = None  # None in a draft: the default (API) on create
    assignee_id: str = ""
    team: str = ""
    tags: tuple[str, ...] = ()
    # Drafts hold what the request sent (None clears a field); stored tickets only str, float
    # or bool values.
    custom_fields: Mapping[str, object] = field(default_factory=dict)


# Fields whose change may make another SLA policy match.
MATCHED_ON = frozenset({"priority", "channel", "tags", "company_id"})
ASSIGNMENT = frozenset({"assignee_id", "team"})


@dataclass(frozen=True)
class Satisfaction:
    rating: int
    comment: str
    at: datetime


@dataclass(frozen=True)
class Ticket:
    """A stored ticket: its writable fields plus what the service keeps."""

    id: str
    fields: TicketFields
    status: Status
    policy: AppliedPolicy | None
    first_response: datetime | None
    solved: datetime | None
    next_response: ResponseRound | None
    satisfaction: Satisfaction | None
    contact_name: str
    contact_email: str
    version: int
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class TicketView:
    """A ticket with what its SLA status is worked out from: its statuses since creation and
    the targets a breach already went out for."""

    ticket: Ticket
    statuses: tuple[tuple[datetime, Status], ...]
    fired_breaches: frozenset[tuple[Target, int]]

    def sla(self, now: datetime) -> list[TargetStatus]:
        t = self.ticket
        if t.policy is None:
            return []
        facts = ClockFacts(self.statuses, t.first_response, t.next_response)
        return evaluate(t.policy, facts, now, self.fired_breaches)


@dataclass(frozen=True)
class ContactFacts:
    """What support keeps of a contact (from the contacts service)."""

    contact_id: str
    name: str
    email: str
    company_id: str  # "" when none
    version: int
    deleted: bool = False


@dataclass(frozen=True)
class CommentDraft:
    body: str
    visibility: Visibility
    author_type: AuthorType
    author_id: str


@dataclass(frozen=True)
class Comment:
    id: str
    ticket_id: str
    body: str
    visibility: Visibility
    author_type: AuthorType
    author_id: str
    create_time: datetime


_LINE_BREAKS = re.compile(r"[\t\n\r]")
_NOT_A_SCALAR = "must be a string, a number, a boolean or null"  # null clears the field


def long_text(value: str, path: str, out: list[Violation]) -> str:
    """Multi-line text (descriptions, comment bodies): held to the one-line rule, except that
    line breaks and tabs are fine."""
    value = value.strip()
    text.one_line(_LINE_BREAKS.sub(" ", value), path, out)
    return value


def _custom_fields(
    values: Mapping[str, object], path: str, out: list[Violation]
) -> dict[str, object]:
    kept: dict[str, object] = {}
    for name, value in values.items():
        where = f"{path}.{name}"
        if not customvalues.NAME.fullmatch(name):
            out.append((where, "names are lower-case letters, digits and underscores"))
        elif (
            value is not None
            and (problem := customvalues.scalar_problem(value, _NOT_A_SCALAR)) is not None
        ):
            out.append((where, problem))
        else:
            kept[name] = value
    return kept


def normalize_ticket(
    draft: TicketFields, paths: Collection[str], *, update: bool = False
) -> TicketFields:
    """Trim, canonicalise and check the top-level fields named in `paths`; raise Invalid.

    Fields outside `paths` are left alone: an update ignores what its mask does not name. An
    update cannot unset the priority or the channel: they have defaults, not "none".
    """
    prefix = "ticket"
    out: list[Violation] = []
    changes: dict[str, Any] = {}
    for name in paths:
        path, value = f"{prefix}.{name}", getattr(draft, name)
        match name:
            case "subject":
                changes[name] = text.required(value, path, out)
            case "description":
                changes[name] = long_text(value, path, out)
            case "contact_id":
                changes[name] = reference(value, path, out, "contact")
                if not changes[name]:
                    out.append((path, "must not be empty"))
            case "company_id":
                changes[name] = reference(value, path, out, "company")
            case "assignee_id" | "team":
                changes[name] = text.one_line(value, path, out)
            case "tags":
                changes[name] = text.tags(value, path, out)
            case "custom_fields":
                changes[name] = _custom_fields(value, path, out)
            case "priority" | "channel" if update and value is None:
                out.append((path, "must be set"))
    if out:
        raise Invalid(out)
    return replace(draft, **changes)


def new_ticket_fields(draft: TicketFields) -> TicketFields:
    """A ticket to create: every field checked, defaults filled in, cleared custom fields gone."""
    fields_ = normalize_ticket(draft, [f for f in TicketFields.__dataclass_fields__])
    return replace(
        fields_,
        priority=fields_.priority or Priority.NORMAL,
        channel=fields_.channel or Channel.API,
        custom_fields=without_cleared(fields_.custom_fields),
    )


def without_cleared(values: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if v is not None}


def finish_update(current: TicketFields, merged: TicketFields) -> TicketFields:
    """The whole-record rules of an updated ticket: it stays with its contact (sending back
    the contact it has is fine)."""
    if merged.contact_id != current.contact_id:
        raise Invalid([("ticket.contact_id", "a ticket stays with the contact who opened it")])
    return replace(merged, custom_fields=without_cleared(merged.custom_fields))


def normalize_comment(draft: CommentDraft, principal: str, contact_id: str) -> CommentDraft:
    """A comment to store: its body checked, the author settled; raise Invalid."""
    out: list[Violation] = []
    body = long_text(draft.body, "comment.body", out)
    if not body and not out:
        out.append(("comment.body", "must not be empty"))
    author_id = text.one_line(draft.author_id, "comment.author_id", out)
    if draft.author_type is AuthorType.CONTACT:
        if draft.visibility is Visibility.INTERNAL:
            out.append(("comment.visibility", "the contact can only write public replies"))
        if author_id and canonical_uuid(author_id) != contact_id:
            out.append(("comment.author_id", "a contact's reply is by the ticket's contact"))
        author_id = contact_id
    else:
        author_id = author_id or principal
    if out:
        raise Invalid(out)
    return replace(draft, body=body, author_id=author_id)
