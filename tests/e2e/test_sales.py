"""Sales through the gateway: conversion end to end (also with contacts down), and its routes."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.helpers import Platform


async def test_conversion_through_the_gateway_reuses_the_contact(api: httpx.AsyncClient) -> None:
    email = f"ada.{uuid.uuid4().hex[:8]}@example.com"
    contact = await api.post("/v1/contacts", json={"first_name": "Ada", "emails": [email.upper()]})
    assert contact.status_code == 201, contact.text
    lead = await api.post("/v1/leads", json={"first_name": "Ada", "email": email})
    assert lead.status_code == 201, lead.text
    lead_id = lead.json()["id"]
    body = {"create_deal": True, "deal": {"amount": "120000", "currency": "EUR"}}
    headers = {"Idempotency-Key": f"convert-{lead_id}"}
    done = await api.post(f"/v1/leads/{lead_id}:convert", json=body, headers=headers)
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["contact_id"] == contact.json()["id"]
    assert result["contact_created"] is False
    assert result["deal"]["contact_id"] == result["contact_id"]
    again = await api.post(f"/v1/leads/{lead_id}:convert", json=body, headers=headers)
    assert again.json()["deal"]["id"] == result["deal"]["id"]
    other = await api.post(f"/v1/leads/{lead_id}:convert", json=body)
    assert other.status_code == 409  # a failed precondition that is not a stale etag
    assert "already converted" in other.json()["detail"]
    assert other.headers["content-type"] == "application/problem+json"
    deals = await api.get("/v1/deals", params={"contact_id": result["contact_id"]})
    assert [d["id"] for d in deals.json()["deals"]] == [result["deal"]["id"]]
    found = await api.get("/v1/contacts", params={"email": email})
    assert len(found.json()["contacts"]) == 1


async def test_bad_input_is_a_problem_naming_the_field(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/deals", json={"name": "D", "currency": "NOPE"})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert any("currency" in e["field"] for e in r.json()["errors"])
    assert (await api.get(f"/v1/leads/{uuid.uuid4()}")).status_code == 404


async def test_conversion_while_contacts_is_down_is_a_503_that_changes_nothing(
    platform: Platform, api: httpx.AsyncClient
) -> None:
    email = f"grace.{uuid.uuid4().hex[:8]}@example.com"
    lead = await api.post("/v1/leads", json={"first_name": "Grace", "email": email})
    assert lead.status_code == 201, lead.text
    lead_id = lead.json()["id"]
    convert = f"/v1/leads/{lead_id}:convert"
    body = {"create_deal": True, "deal": {"amount": "5000", "currency": "EUR"}}
    headers = {"Idempotency-Key": f"convert-{lead_id}"}
    platform.stop("contacts")
    try:
        down = await api.post(convert, json=body, headers=headers)
    finally:
        platform.start("contacts")
    assert down.status_code == 503, down.text
    assert down.headers["content-type"] == "application/problem+json"
    assert int(down.headers["Retry-After"]) > 0
    assert "contacts" in down.json()["detail"]
    assert (await api.get(f"/v1/leads/{lead_id}")).json()["status"] == "LEAD_STATUS_NEW"
    assert (await api.get("/v1/deals")).json()["deals"] == []

    # The client retries with the same key, as Retry-After says, until contacts is back.
    for _ in range(300):
        done = await api.post(convert, json=body, headers=headers)
        if done.status_code != 503:
            break
        await asyncio.sleep(0.1)
    assert done.status_code == 200, done.text
    assert done.json()["contact_created"] is True
    found = await api.get("/v1/contacts", params={"email": email})
    assert [c["id"] for c in found.json()["contacts"]] == [done.json()["contact_id"]]
    deals = (await api.get("/v1/deals")).json()["deals"]
    assert [d["id"] for d in deals] == [done.json()["deal"]["id"]]
