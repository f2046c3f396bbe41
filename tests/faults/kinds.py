"""The writes of the fault run, one kind per service: what each sends, what it should leave in
its service's database and on the stream, and the figures that compare them.

A new service joins the suite by adding its kind to KINDS (notify: a webhook delivery): the
run drives, faults, waits for and checks every kind the same way, and kills its service.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import psycopg

from tests.faults.client import Client, Write
from tests.faults.events import Delivery, EventKey, key_of

Conn = psycopg.AsyncConnection[Any]


@dataclass
class Figures:
    """What one kind's writes came to. Every figure but `acknowledged` must be zero."""

    acknowledged: int = 0
    given_up: int = 0  # never acknowledged: the caller's last answer was a failure
    lost: int = 0  # acknowledged, and not in the database
    unanswered_committed: int = 0  # in the database, its caller never told it succeeded
    duplicate_records: int = 0  # a second record for one logical write
    events_lost: int = 0  # a committed change whose event never reached the stream
    duplicate_events: int = 0  # a second event id for one change, or one id with two contents
    phantom_events: int = 0  # an event of a change the database does not hold

    def failures(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "acknowledged"}


class WriteKind(Protocol):
    name: str  # its column in the table
    service: str  # the owning service: its database is checked
    scopes: tuple[str, ...]  # what the run's API key needs for it
    weight: int  # its share of the writes
    keyed: bool  # whether its writes carry an Idempotency-Key

    async def prepare(self, client: Client, lanes: int) -> None:
        """Make what its writes need, before any fault; each lane writes in order."""

    def next_write(self, lane: int) -> Write:
        """The lane's next write of this kind."""

    def event_of(self, write: Write) -> EventKey:
        """The event an acknowledged write puts on the stream."""

    async def verify(
        self, writes: Sequence[Write], conn: Conn, tenant_id: str, deliveries: Sequence[Delivery]
    ) -> Figures:
        """Its writes against the service's database (`conn`, as a superuser) and the stream."""


def count_events(
    figures: Figures, expected: set[EventKey], event: str, deliveries: Iterable[Delivery]
) -> None:
    """Each expected change's event exactly once per ce-id, and no other event of its type.

    A message delivered twice, or published twice under one ce-id (the relay's retry), is the
    same event; two ce-ids for one change, or one ce-id with two contents, are two events.
    """
    ids: dict[EventKey, set[str]] = defaultdict(set)
    contents: dict[str, set[str]] = defaultdict(set)
    for delivery in deliveries:
        if delivery.event == event:
            ids[key_of(delivery)].add(delivery.ce_id)
            contents[delivery.ce_id].add(delivery.digest)
    figures.events_lost += len(expected - ids.keys())
    figures.phantom_events += len(ids.keys() - expected)
    figures.duplicate_events += sum(len(found) - 1 for found in ids.values())
    figures.duplicate_events += sum(len(found) - 1 for found in contents.values())


def count_creates(figures: Figures, writes: Sequence[Write], records: dict[str, list[str]]) -> None:
    """Creates against the records their labels find: one each for the acknowledged (the id
    its caller was told), none for the others, and none that no write of the run asked for."""
    records = dict(records)
    for write in writes:
        found = records.pop(write.label, [])
        figures.duplicate_records += max(0, len(found) - 1)
        if write.answer is not None:
            figures.acknowledged += 1
            figures.lost += write.answer["id"] not in found
        else:
            figures.given_up += 1
            figures.unanswered_committed += bool(found)
    figures.unanswered_committed += sum(len(found) for found in records.values())


async def labelled(conn: Conn, query: str, *params: str) -> dict[str, list[str]]:
    """Record ids by label, from a query of (id, label) rows."""
    records: dict[str, list[str]] = defaultdict(list)
    for record_id, label in await (await conn.execute(query, params)).fetchall():
        records[label].append(record_id)
    return records


class ContactCreates:
    """POST /v1/contacts with an Idempotency-Key. Each body is told apart by its last name,
    not by an email: emails are unique per tenant, which would turn a second record into a
    refused create and hide it, and a duplicate must show as the second row it would be."""

    name = "contact create"
    service = "contacts"
    scopes: tuple[str, ...] = ("contacts:read", "contacts:write")
    weight = 3
    keyed = True
    EVENT = "contacts.contact.created"
    TAG = "fault-suite"  # on every contact this kind writes, and on no other

    def __init__(self) -> None:
        self._run = uuid.uuid4().hex[:8]
        self._made = 0

    async def prepare(self, client: Client, lanes: int) -> None:
        return None  # creates need nothing

    def next_write(self, lane: int) -> Write:
        self._made += 1
        label = f"fault-{self._run}-{lane}-{self._made}"
        return Write(
            self.name,
            label,
            "POST",
            "/v1/contacts",
            {"first_name": "Fault", "last_name": label, "tags": [self.TAG]},
            key=str(uuid.uuid4()),
        )

    def event_of(self, write: Write) -> EventKey:
        assert write.answer is not None
        return (self.EVENT, write.answer["id"], write.answer["version"])

    async def verify(
        self, writes: Sequence[Write], conn: Conn, tenant_id: str, deliveries: Sequence[Delivery]
    ) -> Figures:
        figures = Figures()
        # Other kinds make contacts too (a ticket needs one): all have their event, version 1.
        everyone = await labelled(
            conn, "SELECT id::text, last_name FROM contacts WHERE tenant_id = %s", tenant_id
        )
        expected = {(self.EVENT, cid, "1") for found in everyone.values() for cid in found}
        mine = await labelled(
            conn,
            "SELECT id::text, last_name FROM contacts WHERE tenant_id = %s AND %s = ANY(tags)",
            tenant_id,
            self.TAG,
        )
        count_creates(figures, writes, mine)
        count_events(figures, expected, self.EVENT, deliveries)
        return figures


class TicketReplies:
    """POST /v1/tickets/{id}/comments with an Idempotency-Key: a reply, told apart by its
    body. Each lane replies on a ticket of its own."""

    name = "ticket reply"
    service = "support"
    scopes: tuple[str, ...] = ("contacts:write", "support:read", "support:write")
    weight = 1
    keyed = True
    EVENT = "support.comment.created"

    def __init__(self) -> None:
        self._run = uuid.uuid4().hex[:8]
        self._made = 0
        self._tickets: list[str] = []

    async def prepare(self, client: Client, lanes: int) -> None:
        holder = Write(self.name, "contact", "POST", "/v1/contacts", {"first_name": "Holder"})
        await client.send(holder)
        assert holder.answer is not None, holder.statuses
        for lane in range(lanes):
            ticket = Write(
                self.name,
                f"ticket {lane}",
                "POST",
                "/v1/tickets",
                {"subject": f"Fault {lane}", "contact_id": holder.answer["id"]},
            )
            await client.send(ticket)
            assert ticket.answer is not None, ticket.statuses
            self._tickets.append(ticket.answer["id"])

    def next_write(self, lane: int) -> Write:
        self._made += 1
        label = f"fault-{self._run}-{lane}-{self._made}"
        path = f"/v1/tickets/{self._tickets[lane]}/comments"
        return Write(self.name, label, "POST", path, {"body": label}, key=str(uuid.uuid4()))

    def event_of(self, write: Write) -> EventKey:
        assert write.answer is not None
        return (self.EVENT, write.answer["id"], "1")  # a comment is never changed

    async def verify(
        self, writes: Sequence[Write], conn: Conn, tenant_id: str, deliveries: Sequence[Delivery]
    ) -> Figures:
        figures = Figures()
        replies = await labelled(
            conn, "SELECT id::text, body FROM comments WHERE tenant_id = %s", tenant_id
        )
        count_creates(figures, writes, replies)
        expected = {(self.EVENT, cid, "1") for found in replies.values() for cid in found}
        count_events(figures, expected, self.EVENT, deliveries)
        return figures


class DealStageChanges:
    """PATCH /v1/deals/{id} to its next open stage. No key: a move is idempotent by itself
    (the deal already in that stage changes nothing), so its retry is the same request. Each
    lane moves its own deal, one move at a time, round its pipeline's open stages."""

    name = "deal stage change"
    service = "sales"
    scopes: tuple[str, ...] = ("sales:read", "sales:write")
    weight = 1
    keyed = False
    EVENT = "sales.deal.stage_changed"

    def __init__(self) -> None:
        self._deals: list[str] = []
        self._stages: list[str] = []  # the open stages, in pipeline order
        self._moves: list[int] = []

    async def prepare(self, client: Client, lanes: int) -> None:
        for lane in range(lanes):
            made = Write(
                self.name,
                f"deal {lane}",
                "POST",
                "/v1/deals",
                {"name": f"Fault {lane}", "currency": "EUR"},
            )
            await client.send(made)
            assert made.answer is not None, made.statuses
            deal = made.answer
            self._deals.append(deal["id"])
        pipeline = (await client.http.get(f"/v1/pipelines/{deal['pipeline_id']}")).json()
        self._stages = [s["id"] for s in pipeline["stages"] if s["kind"] == "STAGE_KIND_OPEN"]
        # A deal starts in the first open stage; a third stage keeps a move that did not
        # commit from looking like the next one, which goes elsewhere.
        assert deal["stage_id"] == self._stages[0]
        assert len(self._stages) >= 3
        self._moves = [0] * lanes

    def next_write(self, lane: int) -> Write:
        self._moves[lane] += 1
        deal, n = self._deals[lane], self._moves[lane]
        target = self._stages[n % len(self._stages)]
        return Write(self.name, f"{deal}#{n}", "PATCH", f"/v1/deals/{deal}", {"stage_id": target})

    def event_of(self, write: Write) -> EventKey:
        assert write.answer is not None
        return (self.EVENT, write.answer["id"], write.answer["version"])

    async def verify(
        self, writes: Sequence[Write], conn: Conn, tenant_id: str, deliveries: Sequence[Delivery]
    ) -> Figures:
        figures = Figures()
        cur = await conn.execute(
            "SELECT deal_id::text, deal_version, to_stage_id::text FROM stage_changes"
            " WHERE tenant_id = %s AND from_stage_id IS NOT NULL"  # not a deal's first stage
            " ORDER BY deal_id, deal_version",
            (tenant_id,),
        )
        changes: dict[str, list[str]] = defaultdict(list)
        expected: set[EventKey] = set()
        for deal, version, stage in await cur.fetchall():
            changes[deal].append(stage)
            expected.add((self.EVENT, deal, str(version)))
        moves: dict[str, list[Write]] = defaultdict(list)
        for write in writes:
            moves[write.path.rsplit("/", 1)[1]].append(write)
        for deal in changes.keys() | moves.keys():
            made = changes[deal]
            # Consecutive moves go to different stages, so the changes recorded are the moves
            # that committed, in order: pair each move with the next change if it went there.
            for write in moves[deal]:
                committed = bool(made) and made[0] == write.body["stage_id"]
                if committed:
                    made = made[1:]
                if write.answer is not None:
                    figures.acknowledged += 1
                    figures.lost += not committed
                else:
                    figures.given_up += 1
                    figures.unanswered_committed += committed
            figures.unanswered_committed += len(made)  # changes no move asked for
        count_events(figures, expected, self.EVENT, deliveries)
        return figures


# Every kind of write the suite drives, with the services it checks.
KINDS: tuple[type[WriteKind], ...] = (ContactCreates, DealStageChanges, TicketReplies)
