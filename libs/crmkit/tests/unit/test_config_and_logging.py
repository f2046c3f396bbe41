"""Start-up configuration errors name the variables; log lines carry the request's context."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic_settings import SettingsConfigDict

from crmkit import auth, context
from crmkit.config import ServiceSettings, load_settings
from crmkit.context import Identity
from crmkit.logging import JsonFormatter

JWKS = auth.jwks(auth.SigningKey.generate("gateway-1").public_jwk())


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore", frozen=True)


def test_missing_and_invalid_variables_are_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEMO_DATABASE_URL", raising=False)
    monkeypatch.setenv("INTERNAL_TOKEN_PUBLIC_KEYS", "not json")
    monkeypatch.setenv("INTERNAL_TOKEN_PRIVATE_KEY", "too-short-to-be-a-key")
    monkeypatch.setenv("DEMO_GRPC_PORT", "99999")
    with pytest.raises(SystemExit) as stopped:
        load_settings(DemoSettings)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "DEMO_DATABASE_URL: Field required" in err
    assert "DEMO_GRPC_PORT:" in err
    assert "INTERNAL_TOKEN_PUBLIC_KEYS: Value error, not a JWKS" in err
    assert "DEMO_INTERNAL_TOKEN_PUBLIC_KEYS" not in err
    assert "too-short" not in err  # a secret's value never reaches the output


def test_a_signing_key_that_does_not_load_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEMO_DATABASE_URL", "postgresql://app@/db")
    monkeypatch.setenv("INTERNAL_TOKEN_PUBLIC_KEYS", JWKS)
    monkeypatch.setenv("INTERNAL_TOKEN_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nsecret-ish")
    monkeypatch.setenv("INTERNAL_TOKEN_KEY_ID", "gateway-1")
    with pytest.raises(SystemExit):
        load_settings(DemoSettings)
    err = capsys.readouterr().err
    assert "INTERNAL_TOKEN_PRIVATE_KEY is not a PEM Ed25519 private key" in err
    assert "secret-ish" not in err


def test_valid_environment_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_DATABASE_URL", "postgresql://app@/db")
    monkeypatch.setenv("INTERNAL_TOKEN_PUBLIC_KEYS", JWKS)
    monkeypatch.setenv("NATS_URL", "nats://10.0.0.1:4222")
    settings = load_settings(DemoSettings)
    assert settings.database_url == "postgresql://app@/db"
    assert settings.nats_url == "nats://10.0.0.1:4222"
    assert settings.grpc_port == 50051


def test_log_lines_are_json_with_trace_tenant_and_request_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.route = "/v1/contacts"
    tokens = (
        context.request_id.set("req-1"),
        context.identity.set(Identity("tenant-1", "key:1", frozenset())),
    )
    try:
        with tracer.start_as_current_span("op") as span:
            line = json.loads(JsonFormatter("contacts").format(record))
    finally:
        context.request_id.reset(tokens[0])
        context.identity.reset(tokens[1])
    ids = span.get_span_context()
    assert line["message"] == "hello world"
    assert line["service"] == "contacts"
    assert line["level"] == "INFO"
    assert line["trace_id"] == format(ids.trace_id, "032x")
    assert line["span_id"] == format(ids.span_id, "016x")
    assert line["tenant_id"] == "tenant-1"
    assert line["request_id"] == "req-1"
    assert line["route"] == "/v1/contacts"
