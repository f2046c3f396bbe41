"""Campaigns: their rules, their SQL, and the runner that sends them.

A campaign is resolved, then sent. Resolving lists its recipients: the contact ids it names,
or the contacts a filter finds, read a page at a time from the contacts service as notify
itself (no caller is there for a scheduled send); the page token is saved with each page, so
a restart goes on from the last page read. Sending takes the next recipients at the
campaign's rate and queues one email each, with the origin key "campaign:<id>:<contact>":
a recipient's email exists at most once, so pausing, resuming or restarting the service
never writes to anyone twice. Consent and the suppression list are checked when each email
is queued and again when it is sent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from crm.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from crmkit import contract, db
from crmkit.client import Callee
from crmkit.clock import Clock
from crmkit.errors import FailedPrecondition, Invalid, NotFound, ServiceError
from crmkit.ids import canonical_uuid, known_id, new_id
from crmkit.text import one_line, required
from trellis_notify import audience, mail_store
from trellis_notify.templates import Values
from trellis_notify.unsubscribe import Links

log = logging.getLogger(__name__)

DEFAULT_RATE = 60
# The one scope notify claims as itself, read from the contract so that it follows what
# ListContacts declares (its key's JWK must allow it: tokenScopes in values).
READ_CONTACTS = contract.required_scope(
    contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"].methods_by_name["ListContacts"]
)
_STAGES = frozenset(
    n.removeprefix("LIFECYCLE_STAGE_")
    for n in contacts_pb2.LifecycleStage.DESCRIPTOR.values_by_name
) - {"UNSPECIFIED"}
_COLUMNS = sql.SQL(
    "id, name, template_id, audience, schedule_time, rate_per_minute, state, error, version,"
    " create_time, update_time, audience_cursor, audience_done"
)


@dataclass(frozen=True)
class Audience:
    contact_ids: tuple[str, ...] = ()
    tag: str = ""
    company_id: str = ""
    lifecycle_stage: str = ""

    @property
    def by_filter(self) -> bool:
        return not self.contact_ids


@dataclass(frozen=True)
class CampaignFields:
    name: str
    template_id: str
    audience: Audience
    schedule_time: datetime | None
    rate_per_minute: int


@dataclass(frozen=True)
class Totals:
    recipients: int = 0
    pending: int = 0
    queued: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class Campaign:
    id: str
    fields: CampaignFields
    state: str
    error: str
    version: int
    create_time: datetime
    update_time: datetime
    totals: Totals = field(default_factory=Totals)


@dataclass(frozen=True)
class Recipient:
    contact_id: str
    status: str
    email_id: str
    reason: str


def new_campaign(
    *,
    name: str,
    template_id: str,
    audience: Audience,
    schedule_time: datetime | None,
    rate_per_minute: int,
) -> CampaignFields:
    out: list[tuple[str, str]] = []
    name = required(name, "campaign.name", out)
    template = canonical_uuid(template_id.strip())
    if template is None:
        out.append(("campaign.template_id", "no such template"))
    where = "campaign.audience"
    ids = []
    for i, raw in enumerate(audience.contact_ids):
        known = canonical_uuid(raw.strip())
        if known is None:
            out.append((f"{where}.contact_ids[{i}]", "not a contact id"))
        elif known not in ids:
            ids.append(known)
    filtered = bool(
        audience.tag.strip() or audience.company_id.strip() or audience.lifecycle_stage.strip()
    )
    if audience.contact_ids and filtered:
        out.append((where, "contact_ids or a filter (tag, company_id, lifecycle_stage), not both"))
    elif not audience.contact_ids and not filtered:
        out.append((where, "needs contact_ids or a filter (tag, company_id, lifecycle_stage)"))
    stage = audience.lifecycle_stage.strip().upper()
    if stage and stage not in _STAGES:
        out.append((f"{where}.lifecycle_stage", f"one of {', '.join(sorted(_STAGES))}"))
    tag = one_line(audience.tag, f"{where}.tag", out)
    company = audience.company_id.strip()
    if company and canonical_uuid(company) is None:
        out.append((f"{where}.company_id", "not a company id"))
    if out:
        raise Invalid(out)
    return CampaignFields(
        name=name,
        template_id=template or "",
        audience=Audience(tuple(ids), tag, canonical_uuid(company) or "", stage),
        schedule_time=schedule_time,
        rate_per_minute=rate_per_minute or DEFAULT_RATE,
    )


def batch_size(rate_per_minute: int) -> int:
    """Recipients taken per batch: a second's worth, at least one."""
    return max(1, math.ceil(rate_per_minute / 60))


def batch_interval(rate_per_minute: int) -> timedelta:
    """The time a batch takes at the rate: batches of a second's worth come every second."""
    return timedelta(seconds=batch_size(rate_per_minute) * 60 / rate_per_minute)


# --- SQL --------------------------------------------------------------------------------------


def _campaign(row: dict[str, Any], totals: Totals | None = None) -> Campaign:
    a = row["audience"]
    return Campaign(
        id=str(row["id"]),
        fields=CampaignFields(
            name=row["name"],
            template_id=str(row["template_id"]),
            audience=Audience(
                tuple(a.get("contact_ids", [])),
                a.get("tag", ""),
                a.get("company_id", ""),
                a.get("lifecycle_stage", ""),
            ),
            schedule_time=row["schedule_time"],
            rate_per_minute=row["rate_per_minute"],
        ),
        state=row["state"],
        error=row["error"],
        version=row["version"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        totals=totals or Totals(),
    )


async def _with_totals(conn: db.Conn, tenant_id: str, rows: list[dict[str, Any]]) -> list[Campaign]:
    """The campaigns of `rows` with their totals, counted in one query for the whole page."""
    cur = await conn.execute(
        "SELECT campaign_id, count(*) AS recipients,"
        " count(*) FILTER (WHERE status = 'pending') AS pending,"
        " count(*) FILTER (WHERE status = 'queued') AS queued,"
        " count(*) FILTER (WHERE status = 'skipped') AS skipped"
        " FROM campaign_recipients WHERE tenant_id = %s AND campaign_id = ANY(%s)"
        " GROUP BY campaign_id",
        (tenant_id, [r["id"] for r in rows]),
    )
    totals = {
        t["campaign_id"]: Totals(t["recipients"], t["pending"], t["queued"], t["skipped"])
        for t in await cur.fetchall()
    }
    return [_campaign(r, totals.get(r["id"])) for r in rows]


async def _select(
    conn: db.Conn, tenant_id: str, campaign_id: str, lock: str = ""
) -> dict[str, Any]:
    known = known_id("campaign", campaign_id)
    cur = await conn.execute(
        sql.SQL("SELECT {columns} FROM campaigns WHERE tenant_id = %s AND id = %s {lock}").format(
            columns=_COLUMNS, lock=sql.SQL(lock)
        ),
        (tenant_id, known),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("campaign", campaign_id)
    return row


async def create(pool: db.Pool, tenant_id: str, fields: CampaignFields, at: datetime) -> Campaign:
    async with db.tenant_tx(pool, tenant_id) as conn:
        await mail_store.select_template(conn, tenant_id, fields.template_id, "FOR KEY SHARE")
        a = fields.audience
        audience_json = (
            {"contact_ids": list(a.contact_ids)}
            if a.contact_ids
            else {"tag": a.tag, "company_id": a.company_id, "lifecycle_stage": a.lifecycle_stage}
        )
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO campaigns (tenant_id, id, name, template_id, audience, schedule_time,"
                " rate_per_minute) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {columns}"
            ).format(columns=_COLUMNS),
            (
                tenant_id,
                new_id(),
                fields.name,
                fields.template_id,
                Jsonb(audience_json),
                fields.schedule_time or at,
                fields.rate_per_minute,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return _campaign(row)


async def get(pool: db.Pool, tenant_id: str, campaign_id: str) -> Campaign:
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await _select(conn, tenant_id, campaign_id)
        return (await _with_totals(conn, tenant_id, [row]))[0]


async def list_campaigns(
    pool: db.Pool, tenant_id: str, after: str | None, limit: int
) -> list[Campaign]:
    query = sql.SQL(
        "SELECT {columns} FROM campaigns WHERE tenant_id = %(tenant_id)s {after}"
        " ORDER BY id DESC LIMIT %(limit)s"
    ).format(columns=_COLUMNS, after=sql.SQL("AND id < %(after)s" if after is not None else ""))
    async with db.tenant_tx(pool, tenant_id) as conn:
        cur = await conn.execute(query, {"tenant_id": tenant_id, "after": after, "limit": limit})
        rows = await cur.fetchall()
        return await _with_totals(conn, tenant_id, rows)


_MOVES = {
    "pause": ({"scheduled", "running"}, "paused"),
    "resume": ({"paused"}, "running"),
    "cancel": ({"scheduled", "running", "paused"}, "cancelled"),
}


async def move(pool: db.Pool, tenant_id: str, campaign_id: str, verb: str) -> Campaign:
    """Pause, resume or cancel; the same move again is answered with the campaign as it is."""
    allowed, target = _MOVES[verb]
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await _select(conn, tenant_id, campaign_id, "FOR NO KEY UPDATE")
        if row["state"] != target:
            if row["state"] not in allowed:
                raise FailedPrecondition(f"a {row['state']} campaign cannot be {verb}d")
            cur = await conn.execute(
                sql.SQL(
                    "UPDATE campaigns SET state = %s, next_batch_at = NULL, version = version + 1,"
                    " update_time = now() WHERE tenant_id = %s AND id = %s RETURNING {columns}"
                ).format(columns=_COLUMNS),
                (target, tenant_id, row["id"]),
            )
            moved = await cur.fetchone()
            assert moved is not None
            row = moved
        return (await _with_totals(conn, tenant_id, [row]))[0]


async def recipients(
    pool: db.Pool, tenant_id: str, campaign_id: str, after: str | None, limit: int
) -> list[Recipient]:
    async with db.tenant_tx(pool, tenant_id) as conn:
        row = await _select(conn, tenant_id, campaign_id)
        cur = await conn.execute(
            "SELECT contact_id, status, email_id, reason FROM campaign_recipients"
            " WHERE tenant_id = %(tenant_id)s AND campaign_id = %(campaign_id)s"
            " AND (%(after)s::uuid IS NULL OR contact_id > %(after)s::uuid)"
            " ORDER BY contact_id LIMIT %(limit)s",
            {"tenant_id": tenant_id, "campaign_id": row["id"], "after": after, "limit": limit},
        )
        return [
            Recipient(str(r["contact_id"]), r["status"], str(r["email_id"] or ""), r["reason"])
            for r in await cur.fetchall()
        ]


# --- the runner -------------------------------------------------------------------------------

# Lists the contacts of a filter as notify itself: (tenant, filter, page token) -> (ids, next).
ListPage = Callable[[str, Audience, str], Awaitable[tuple[list[str], str]]]


class CampaignRunner:
    """Advances due campaigns a step per tick: a page of audience, or a batch of emails."""

    def __init__(
        self, pool: db.Pool, links: Links, list_page: ListPage | None, clock: Clock
    ) -> None:
        self._pool = pool
        self._links = links
        self._list_page = list_page
        self._clock = clock

    async def tick(self) -> int:
        """One step of every due campaign; how many were advanced."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT tenant_id, id FROM notify_due_campaigns(%s, %s)", (self._clock(), 100)
            )
            due = await cur.fetchall()
        for row in due:
            await self._advance(str(row["tenant_id"]), str(row["id"]))
        return len(due)

    async def _advance(self, tenant_id: str, campaign_id: str) -> None:
        at = self._clock()
        async with db.tenant_tx(self._pool, tenant_id) as conn:
            # SKIP LOCKED: another replica on the same campaign leaves it to the one there first.
            cur = await conn.execute(
                sql.SQL(
                    "SELECT {columns} FROM campaigns WHERE tenant_id = %s AND id = %s"
                    " AND state IN ('scheduled', 'running') FOR NO KEY UPDATE SKIP LOCKED"
                ).format(columns=_COLUMNS),
                (tenant_id, campaign_id),
            )
            row = await cur.fetchone()
            if row is None:
                return
            campaign = _campaign(row)
            if not row["audience_done"]:
                await self._resolve(conn, tenant_id, campaign, row["audience_cursor"])
                return
            await self._send_batch(conn, tenant_id, campaign, at)

    async def _resolve(
        self, conn: db.Conn, tenant_id: str, campaign: Campaign, cursor: str
    ) -> None:
        a = campaign.fields.audience
        if a.by_filter:
            if self._list_page is None:
                await self._stop(
                    conn, tenant_id, campaign.id, "no contacts service to resolve the audience with"
                )
                return
            try:
                ids, cursor = await self._list_page(tenant_id, a, cursor)
            except ServiceError as err:
                # Transient (contacts down): the next tick tries this page again.
                log.warning(
                    "campaign audience not read",
                    extra={"campaign_id": campaign.id, "error": err.message},
                )
                return
            done = not cursor
        else:
            ids, done = list(a.contact_ids), True
        await conn.execute(
            "INSERT INTO campaign_recipients (tenant_id, campaign_id, contact_id)"
            " SELECT %s, %s, unnest(%s::uuid[]) ON CONFLICT DO NOTHING",
            (tenant_id, campaign.id, ids),
        )
        await conn.execute(
            "UPDATE campaigns SET state = 'running', audience_cursor = %s, audience_done = %s,"
            " update_time = now() WHERE tenant_id = %s AND id = %s",
            (cursor, done, tenant_id, campaign.id),
        )

    async def _stop(self, conn: db.Conn, tenant_id: str, campaign_id: str, error: str) -> None:
        await conn.execute(
            "UPDATE campaigns SET state = 'paused', error = %s, version = version + 1,"
            " update_time = now() WHERE tenant_id = %s AND id = %s",
            (error, tenant_id, campaign_id),
        )

    async def _send_batch(
        self, conn: db.Conn, tenant_id: str, campaign: Campaign, at: datetime
    ) -> None:
        rate = campaign.fields.rate_per_minute
        cur = await conn.execute(
            "SELECT contact_id FROM campaign_recipients"
            " WHERE tenant_id = %s AND campaign_id = %s AND status = 'pending'"
            " ORDER BY contact_id LIMIT %s",
            (tenant_id, campaign.id, batch_size(rate)),
        )
        batch = [str(r["contact_id"]) for r in await cur.fetchall()]
        if not batch:
            await conn.execute(
                "UPDATE campaigns SET state = 'completed', version = version + 1,"
                " update_time = now() WHERE tenant_id = %s AND id = %s",
                (tenant_id, campaign.id),
            )
            return
        try:
            template = await mail_store.select_template(
                conn, tenant_id, campaign.fields.template_id
            )
        except NotFound:
            await self._stop(conn, tenant_id, campaign.id, "the template was deleted")
            return
        for contact_id in batch:
            status, email_id, reason = await self._one(
                conn, tenant_id, campaign, template, contact_id, at
            )
            await conn.execute(
                "UPDATE campaign_recipients SET status = %s, email_id = %s, reason = %s"
                " WHERE tenant_id = %s AND campaign_id = %s AND contact_id = %s",
                (status, email_id, reason, tenant_id, campaign.id, contact_id),
            )
        await conn.execute(
            "UPDATE campaigns SET next_batch_at = %s WHERE tenant_id = %s AND id = %s",
            (at + batch_interval(rate), tenant_id, campaign.id),
        )

    async def _one(
        self,
        conn: db.Conn,
        tenant_id: str,
        campaign: Campaign,
        template: Any,
        contact_id: str,
        at: datetime,
    ) -> tuple[str, str | None, str]:
        try:
            found = await audience.recipient(conn, tenant_id, contact_id)
        except NotFound:
            return "skipped", None, "contact unknown"
        key = f"campaign:{campaign.id}:{contact_id}"
        queued = await mail_store.enqueue(
            conn,
            tenant_id,
            mail_store.Send(
                template=template,
                to=found.email,
                contact_id=contact_id,
                locale="",
                values=Values(contact=found.variables()),
                origin=f"campaign:{campaign.id}",
                origin_key=key,
            ),
            self._links,
            at,
        )
        if queued is None:  # queued before (the recipient row's update was lost): look it up
            cur = await conn.execute(
                "SELECT id, status, error FROM emails WHERE tenant_id = %s AND origin_key = %s",
                (tenant_id, key),
            )
            row = await cur.fetchone()
            assert row is not None
            queued_id, status, error = str(row["id"]), row["status"], row["error"]
        else:
            queued_id, status, error = queued.id, queued.status, queued.error
        if status in ("suppressed", "failed"):
            return "skipped", queued_id, error
        return "queued", queued_id, ""


def contacts_lister(contacts: Callee) -> ListPage:
    """ListContacts through the contacts service, as notify itself in the campaign's tenant."""
    stub = contacts_pb2_grpc.ContactsServiceStub(contacts.channel)

    async def list_page(tenant_id: str, a: Audience, cursor: str) -> tuple[list[str], str]:
        request = contacts_pb2.ListContactsRequest(
            page_size=500,
            page_token=cursor,
            tag=a.tag,
            company_id=a.company_id,
            lifecycle_stage=contacts_pb2.LifecycleStage.Value(
                f"LIFECYCLE_STAGE_{a.lifecycle_stage or 'UNSPECIFIED'}"
            ),
        )
        token = contacts.as_itself(tenant_id, [READ_CONTACTS])
        answer = await contacts.call(stub.ListContacts, request, token=token)
        return [c.id for c in answer.contacts], answer.next_page_token

    return list_page
