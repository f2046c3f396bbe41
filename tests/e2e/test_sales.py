"""Sales through the gateway with contacts running: conversion end to end, and its routes."""

from __future__ import annotations

import uuid

import httpx


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
