"""The published OpenAPI document and the real stack agree, in both directions.

Schemathesis runs every check it has: no 5xx, responses (status, headers, body) as documented,
schema-valid requests accepted (but for the rules listed below), schema-violating ones refused,
405s and OPTIONS listing the documented methods. The run is bounded (fixed seed, a few examples
per operation) and talks to a second gateway of the same stack whose rate limits the run cannot
exhaust, so every request reaches the code under test rather than a 429.

This module is also the run's hooks file: schemathesis loads it to register the check below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import negative_data_rejection

from tests.helpers import Platform, Tenant
from trellis_devstack.declaration import GATEWAY
from trellis_devstack.infra import free_port
from trellis_devstack.processes import ServiceProcesses
from trellis_devstack.testing import NO_RATE_LIMITS

# Bounded: a few examples per operation keep this well under a minute; the seed makes a failure
# reproducible with the same command line.
_EXAMPLES = "12"
_SEED = "20261123"

# Statuses a schema-valid request may get: its target may not exist (404), may conflict with
# the current state (409), have changed since the If-Match etag (412), or its Idempotency-Key
# may have been used with another body (422) - all facts about earlier requests, not about the
# request's validity. Schemathesis' own positive_data_acceptance is replaced by the check below,
# which accepts these and refuses every 400 but the ones _UNDECLARED_RULES explain.
_NOT_A_REFUSAL = {401, 403, 404, 409, 412, 422, 429}

# Rules the services apply that the protos cannot declare yet, so the document cannot show them
# (the report of issue 6 section 4 proposes contract options for the first group; the second
# depends on the tenant's own data, which no static document can list). Each is a field path and
# the start of the service's message, both regular expressions: a schema-valid request refused
# with a 400 is a disagreement unless every field error it names matches one of them.
_UNDECLARED_RULES = [
    # every service: crmkit.text's rule for text fields, and page tokens, which are opaque
    # cursors only the server makes (the query's is pinned to the first page's below; a body's
    # cannot be)
    (
        r"[a-z_.\[\]0-9]+",
        "must not contain control|must not contain bidirectional|must contain visible",
    ),
    (r"page_token", "malformed page token"),
    # formats and cross-field rules
    (r"contact\.emails\[\d+\]", "not a valid email address|the same address as"),
    (r"contact\.phones\[\d+\]", "not an E.164 phone number|the same number as"),
    (r"contact\.tags\[\d+\]", "must not be empty"),
    (r"contact", "a contact needs a first name, a last name or an email address"),
    (r"company\.domain", "not a valid domain name"),
    (r"field_definition\.name", "must be 1-64 lower-case letters"),
    (
        r"field_definition\.options(\[\d+\])?",
        "an ENUM field needs|only ENUM fields|repeats an earlier|must not be empty",
    ),
    # references to the tenant's data: its custom field definitions, its companies
    (r"(contact|company)\.custom_fields\..*", ""),
    (r"contact\.company_id", "no such company"),
    # support: text, formats and cross-field rules; its tickets' contacts and companies
    (
        r"(ticket|comment|article|sla_policy)\.[a-z_.]+(\[\d+\])?|query|team|assignee_id",
        "must not contain|must contain visible|must not be empty",
    ),
    (r"ticket\.(contact|company)_id", "no such (contact|company)"),
    (r"ticket\.custom_fields\..*", "names are lower-case|must be a"),
    (r"comment\.(visibility|author_id)", "the contact can only|a contact's reply"),
    (r"sla_policy\.targets(\.[a-z_]+)?", "must be|set at least one"),
    (r"sla_policy\.conditions\.[a-z_]+\[\d+\]", "not a company id|must be a value"),
    (r"sla_policy\.business_hours\..*", ""),
    (r"article\.locale|locale", "not a language tag"),
    (r"status", "required"),
    # sales: formats, cross-field rules, references to the tenant's pipelines, stages, leads,
    # deals and contacts. A deal's name is required but for a converted lead's deal, which is
    # named after the lead: Deal serves both, so it cannot mark the name REQUIRED.
    (r"lead", "a lead needs a name"),
    (r"lead\.email", "not a valid email address"),
    (r"lead\.phone", "not an E.164 phone number"),
    (r"lead\.status", "leads are converted with|a converted lead stays"),
    (r"(lead|deal)\.tags\[\d+\]|tag", "must not be empty"),
    (r"(lead|deal)\.custom_fields\..*", ""),
    (r"(lead|deal|activity)\.[a-z_]+_id|pipeline_id|stage_id", "no such"),
    (r"deal", "a deal is created only with create_deal"),
    (r"deal\.name", "must not be empty"),
    (r"deal\.currency", "must be an ISO 4217|'.*' is not an ISO 4217"),
    (r"deal\.close_date|(start|end)_date", "must be a calendar date"),
    (r"deal\.forecast_category", "CLOSED is set"),
    (r"activity", "an activity belongs to exactly one"),
    (
        r"pipeline\.stages(\[\d+\]\.[a-z]+)?",
        "a pipeline needs|the same (name|stage) as|a closed-(won|lost) stage has|"
        "the stages of a new pipeline|no such stage",
    ),
    (r"pipeline\.is_default", "make another pipeline"),
    (r"scoring_rule\.conditions\[\d+\]\.[a-z]+(\[\d+\])?", ""),
    (r"scoring_rule\.(event_type|contact_field|half_life_days)", ""),
    # report ranges: in order, and bounded in length
    (r"end_(time|date)", "must not be before|must be after|at most"),
    # notify: URL and address rules, type patterns, purposes and locales, templates that must
    # compile, one of two fields (a template or a webhook, a contact or an address, listed
    # contacts or a filter); references to the tenant's templates, webhooks and contacts
    (r"webhook\.(url|description|event_types(\[\d+\])?)", ""),
    (r"suppression\.(email|purpose|detail)|to|contact_id", ""),
    (r"template(\.[a-z_]+(\[\d+\])?)*|variables(\.[a-z]+)?", ""),
    (r"rule(\.[a-z_]+(\[\d+\])?)*", ""),
    (r"campaign(\.[a-z_]+(\[\d+\])?)*", ""),
    (r"[a-z_]+_time", "required|not a valid time"),
    # contacts' consent: the purpose's form, a granted consent's legal basis
    (r"consent\.(purpose|legal_basis|source|time)", ""),
]


def _documented_body(case: Any, body: Any = None) -> bool:
    """Whether the request's body (or `body` in its place) is one the document allows, or it
    has none: the stateful phase also sends bodies it mutated, not the server's fault to refuse."""
    body = case.body if body is None else body
    content = case.operation.definition.raw.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None or not isinstance(body, dict | list | str | int | float | bool):
        return True
    components = case.operation.schema.raw_schema["components"]
    validator = jsonschema.Draft202012Validator({**schema, "components": components})
    return bool(validator.is_valid(body))


def _updated_paths(case: Any) -> set[str] | None:
    """The fields an update changes (AIP-134): those its update_mask names, or without a mask
    every field its body sends; None for a request that is not an update."""
    if not isinstance(case.body, dict) or case.method.upper() != "PATCH":
        return None
    mask = (case.query or {}).get("update_mask")
    if not mask:
        return set(case.body)
    return {p for m in (mask if isinstance(mask, list) else [mask]) for p in str(m).split(",")}


def _clears_an_updated_field(case: Any, field: str) -> bool:
    """Whether the error is on a field the update changes and the body leaves empty.

    AIP-134: such a field is cleared, and a service refuses to clear what its record needs (a
    deal's name, a ticket's channel). A body schema cannot say so: it depends on the mask.
    """
    paths = _updated_paths(case)
    name = re.split(r"[.\[]", field.partition(".")[2] or field)[0]  # "deal.name" -> "name"
    return paths is not None and name in paths and not case.body.get(name)


def _only_unmasked_fields_invalid(case: Any) -> bool:
    """Whether the body breaks its schema only in fields the update mask leaves out, which
    AIP-134 has the service ignore: accepting such a request is right."""
    paths = _updated_paths(case)
    if paths is None or not (case.query or {}).get("update_mask") or _documented_body(case):
        return False
    return _documented_body(case, {k: v for k, v in case.body.items() if k in paths})


@schemathesis.check
def schema_valid_request_accepted(ctx: Any, response: Any, case: Any) -> None:
    """positive_data_acceptance, minus the refusals _UNDECLARED_RULES explain."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    status = response.status_code
    if status < 400 or status >= 500 or status in _NOT_A_REFUSAL or not _documented_body(case):
        return
    errors = response.json().get("errors", []) if status == 400 else []
    unexplained = [
        e
        for e in errors
        if not _clears_an_updated_field(case, e["field"])
        and not any(
            re.fullmatch(path, e["field"], re.DOTALL) and re.match(message, e["message"])
            for path, message in _UNDECLARED_RULES
        )
    ]
    if status != 400 or not errors or unexplained:
        raise AssertionError(f"a schema-valid request was refused: {status} {response.text}")


@schemathesis.check
def schema_violating_request_refused(ctx: Any, response: Any, case: Any) -> bool | None:
    """negative_data_rejection, minus updates whose only invalid fields the mask leaves out."""
    if _only_unmasked_fields_invalid(case):
        return None
    return negative_data_rejection(ctx, response, case)


@pytest.fixture(scope="module")
def roomy_gateway(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Another gateway of the same stack, its rate limits beyond what the run sends."""
    stack = platform.stack
    own_ports = {name: free_port() for name in stack.ports[GATEWAY]}
    roomy = ServiceProcesses(
        replace(stack, ports={**stack.ports, GATEWAY: own_ports}), tmp_path_factory.mktemp("fuzz")
    )
    roomy.start(GATEWAY, NO_RATE_LIMITS)
    try:
        roomy.wait_ready()
        yield roomy.stack.gateway_url
    finally:
        roomy.stop(GATEWAY)


def _config(victim_key_id: str) -> str:
    return f"""
hooks = "{Path(__file__).resolve()}"
continue-on-failure = true

# A page token is an opaque cursor only the server makes: no schema can say which strings
# are one. The first page's (empty) token is the one a client can know.
[parameters]
"query.page_token" = ""

# A refusal may also be a 412: with `If-Match: *` a record that does not exist fails the
# precondition (RFC 9110) before its body is judged; or a 413: a string far over its bound
# (notify's template bodies) makes the body larger than the gateway takes at all.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "412", "413", "415", "422", "428", "429"]

# Stateful sequences follow the links the document declares: schemathesis' dependency
# inference put a created record under a body key no schema has ("company" in a Company).
[phases.stateful.inference]
algorithms = ["location-headers"]

# The run may revoke a key, but never the one it authenticates with.
[[operations]]
include-operation-id = "DeleteApiKey"
parameters = {{ "path.id" = "{victim_key_id}" }}
"""


def test_openapi_document_and_server_agree(
    tenant: Tenant, roomy_gateway: str, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {tenant.key}"}
    with httpx.Client(base_url=tenant.gateway_url, headers=auth) as admin:
        victim = admin.post("/v1/api-keys", json={"name": "to revoke", "scopes": ["admin"]})
    victim.raise_for_status()
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(victim.json()["id"]))
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(cli),
            "--config-file",
            str(config),
            "run",
            f"{roomy_gateway}/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {tenant.key}",
            "--checks",
            "all",
            "--exclude-checks",
            # replaced by schema_valid_request_accepted and schema_violating_request_refused
            "positive_data_acceptance,negative_data_rejection",
            "--max-examples",
            _EXAMPLES,
            "--seed",
            _SEED,
            # Platform-operator operations need the bootstrap key, not a tenant's.
            "--exclude-path-regex",
            "^/v1/tenants",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
