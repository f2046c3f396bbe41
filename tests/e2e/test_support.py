"""Support through the gateway with contacts running: tickets for a tenant's contacts, the
workflow's 409s, comments, CSAT, the knowledge base and the report, as problem+json when
refused; and its events on NATS."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import nats

from tests.helpers import Platform, Tenant, new_tenant

PROBLEM = "application/problem+json"


async def _contact(api: httpx.AsyncClient, name: str = "Ada") -> str:
    made = await api.post("/v1/contacts", json={"first_name": name})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def _key_for(platform: Platform, tenant: Tenant, scopes: list[str]) -> str:
    """Another API key of the same tenant, with fewer scopes."""
    admin = {"Authorization": f"Bearer {platform.stack.bootstrap_key}"}
    made = httpx.post(
        f"{tenant.gateway_url}/v1/api-keys",
        headers=admin,
        json={"tenant_id": tenant.id, "name": "reader", "scopes": scopes},
        timeout=10,
    )
    made.raise_for_status()
    return str(made.json()["secret"])


async def test_a_ticket_through_its_workflow(platform: Platform, tenant: Tenant) -> None:
    nc = await nats.connect(platform.stack.nats_url)
    sub = await nc.jetstream().subscribe(
        f"crm.events.{tenant.id}.support.ticket.>", ordered_consumer=True
    )
    try:
        async with tenant.client() as api:
            contact_id = await _contact(api)
            made = await api.post(
                "/v1/tickets",
                json={
                    "subject": "Printer on fire",
                    "contact_id": contact_id,
                    "priority": "PRIORITY_HIGH",
                },
                headers={"Idempotency-Key": f"ticket-{uuid.uuid4()}"},
            )
            assert made.status_code == 201, made.text
            ticket = made.json()
            assert (ticket["status"], ticket["contact_name"]) == ("TICKET_STATUS_NEW", "Ada")
            tid = ticket["id"]

            refused = await api.post(
                f"/v1/tickets/{tid}:changeStatus", json={"status": "TICKET_STATUS_CLOSED"}
            )
            assert refused.status_code == 409, refused.text
            assert refused.headers["content-type"] == PROBLEM
            assert refused.json()["detail"] == (
                "the ticket is NEW and cannot become CLOSED;"
                " allowed: OPEN, PENDING, ON_HOLD, SOLVED"
            )

            patched = await api.patch(
                f"/v1/tickets/{tid}",
                json={"assignee_id": "agent-7"},
                headers={"If-Match": f'"{ticket["etag"]}"'},
            )
            assert patched.status_code == 200, patched.text
            stale = await api.patch(
                f"/v1/tickets/{tid}",
                json={"team": "x"},
                headers={"If-Match": f'"{ticket["etag"]}"'},
            )
            assert stale.status_code == 412, stale.text

            comment = await api.post(f"/v1/tickets/{tid}/comments", json={"body": "On it."})
            assert comment.status_code == 201, comment.text
            solved = await api.post(
                f"/v1/tickets/{tid}:changeStatus", json={"status": "TICKET_STATUS_SOLVED"}
            )
            assert solved.json()["status"] == "TICKET_STATUS_SOLVED"
            rated = await api.post(
                f"/v1/tickets/{tid}:rate", json={"rating": 5, "comment": "Quick"}
            )
            assert rated.json()["satisfaction"]["rating"] == 5
            twice = await api.post(f"/v1/tickets/{tid}:rate", json={"rating": 1})
            assert twice.status_code == 409
            assert twice.headers["content-type"] == PROBLEM
            comments = await api.get(f"/v1/tickets/{tid}/comments")
            assert [c["body"] for c in comments.json()["comments"]] == ["On it."]

        kinds = []
        for _ in range(5):
            msg = await sub.next_msg(timeout=20)
            headers = msg.headers or {}
            assert headers["ce-subject"] == tid
            assert json.loads(msg.data)["ticket"]["id"] == tid
            kinds.append((headers["ce-type"], headers["ce-recordversion"]))
    finally:
        await nc.close()
    assert kinds == [
        ("crm.support.ticket.created.v1", "1"),
        ("crm.support.ticket.assigned.v1", "2"),
        ("crm.support.ticket.status_changed.v1", "3"),  # the agent's reply opened it
        ("crm.support.ticket.solved.v1", "4"),
        ("crm.support.ticket.rated.v1", "5"),
    ]


async def test_a_ticket_for_an_unknown_or_foreign_contact_is_refused(
    platform: Platform, tenant: Tenant
) -> None:
    other = new_tenant(platform)
    async with other.client() as theirs:
        foreign = await _contact(theirs, "Eve")
    async with tenant.client() as api:
        for contact_id in (foreign, str(uuid.uuid4())):
            r = await api.post("/v1/tickets", json={"subject": "Help", "contact_id": contact_id})
            assert r.status_code == 400, r.text
            assert r.headers["content-type"] == PROBLEM
            assert r.json()["errors"] == [
                {"field": "ticket.contact_id", "message": "no such contact in this tenant"}
            ]
        listed = await api.get("/v1/tickets")
        assert listed.json()["tickets"] == []
    # And the other way round: the foreign tenant sees nothing of this one's tickets.
    async with tenant.client() as api:
        mine = await api.post(
            "/v1/tickets", json={"subject": "Mine", "contact_id": await _contact(api)}
        )
    async with other.client() as theirs:
        assert (await theirs.get(f"/v1/tickets/{mine.json()['id']}")).status_code == 404
        assert (await theirs.get("/v1/tickets")).json()["tickets"] == []


async def test_bad_input_is_a_problem_naming_the_field(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/tickets", json={"subject": "x" * 301, "contact_id": "c"})
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"field": "ticket.subject", "message": "longer than 300 characters"}
    ]
    r = await api.get("/v1/tickets", params={"page_size": "501"})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "page_size"
    r = await api.post(
        "/v1/sla-policies",
        json={
            "name": "Bad",
            "targets": {"first_response": "0s"},
            "business_hours": {"time_zone": "Mars/Base"},
        },
    )
    assert r.status_code == 400
    assert {e["field"] for e in r.json()["errors"]} == {
        "sla_policy.targets.first_response",
        "sla_policy.business_hours.time_zone",
    }
    r = await api.post("/v1/kb/articles:search", json={"query": " "})
    assert r.status_code == 400
    assert r.json()["errors"] == [{"field": "query", "message": "must not be empty"}]
    r = await api.get(
        "/v1/support-report",
        params={"start_time": "2030-01-02T00:00:00Z", "end_time": "2030-01-01T00:00:00Z"},
    )
    assert r.status_code == 400
    assert r.json()["errors"] == [{"field": "end_time", "message": "must be after start_time"}]


async def test_the_knowledge_base_hides_drafts_from_readers(
    platform: Platform, tenant: Tenant
) -> None:
    async with tenant.client() as api:
        published = await api.post(
            "/v1/kb/articles",
            json={
                "title": "How to reset your password",
                "body": "Choose 'Forgot password' on the sign-in page.",
                "status": "ARTICLE_STATUS_PUBLISHED",
            },
        )
        assert published.status_code == 201, published.text
        draft = await api.post(
            "/v1/kb/articles",
            json={"title": "Password rules", "body": "Passwords need twelve characters."},
        )
        assert draft.json()["status"] == "ARTICLE_STATUS_DRAFT"
        agent = await api.post("/v1/kb/articles:search", json={"query": "password"})
        assert {m["article"]["id"] for m in agent.json()["matches"]} == {
            published.json()["id"],
            draft.json()["id"],
        }
    reader = _key_for(platform, tenant, ["kb:read"])
    async with tenant.client(reader) as api:
        found = await api.post("/v1/kb/articles:search", json={"query": "reset password"})
        assert found.status_code == 200, found.text
        (match,) = found.json()["matches"]
        assert match["article"]["id"] == published.json()["id"]
        assert "<mark>" in match["snippet"]
        assert (await api.get(f"/v1/kb/articles/{draft.json()['id']}")).status_code == 404
        listed = await api.get("/v1/kb/articles")
        assert [a["id"] for a in listed.json()["articles"]] == [published.json()["id"]]
        drafts = await api.get("/v1/kb/articles", params={"status": "ARTICLE_STATUS_DRAFT"})
        assert drafts.status_code == 403
        assert (await api.post("/v1/kb/articles", json={"title": "x"})).status_code == 403


async def test_the_report_counts_the_tenants_tickets(api: httpx.AsyncClient) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    contact_id = await _contact(api)
    for priority in ("PRIORITY_HIGH", "PRIORITY_HIGH", "PRIORITY_LOW"):
        made = await api.post(
            "/v1/tickets",
            json={"subject": "s", "contact_id": contact_id, "priority": priority},
        )
        assert made.status_code == 201
    end = datetime.now(UTC) + timedelta(minutes=1)
    r = await api.get(
        "/v1/support-report",
        params={
            "start_time": start.isoformat().replace("+00:00", "Z"),
            "end_time": end.isoformat().replace("+00:00", "Z"),
        },
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert {g["group"]: g["tickets"] for g in report["by_priority"]} == {"LOW": 1, "HIGH": 2}
    backlog = {s["status"]: s["tickets"] for s in report["backlog"]}
    assert backlog["TICKET_STATUS_NEW"] == 3
