"""Start-up configuration errors name the variables; log lines carry the request's context."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

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


def test_tracing_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_DATABASE_URL", "postgresql://app@/db")
    monkeypatch.setenv("INTERNAL_TOKEN_PUBLIC_KEYS", JWKS)
    assert not load_settings(DemoSettings).tracing.exporting
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    tracing = load_settings(DemoSettings).tracing
    assert (tracing.exporting, tracing.protocol) == (True, "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # the specific one wins
    assert load_settings(DemoSettings).tracing.protocol == "grpc"


def test_an_unknown_otlp_protocol_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEMO_DATABASE_URL", "postgresql://app@/db")
    monkeypatch.setenv("INTERNAL_TOKEN_PUBLIC_KEYS", JWKS)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(SystemExit):
        load_settings(DemoSettings)
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in capsys.readouterr().err


_SHOW_TRACING = """
from opentelemetry import trace
from crmkit import telemetry
from crmkit.config import TracingSettings
provider = telemetry.setup_tracing("demo", TracingSettings())
print(type(provider).__name__, provider and provider.sampler.get_description())
print([type(p.span_exporter).__module__ for p in getattr(provider, "_active_span_processor")._span_processors] if provider else [])
"""


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({}, "NoneType None\n[]"),  # nothing reads spans: the no-op tracer stays
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.25",
            },
            "TracerProvider TraceIdRatioBased{0.25}\n"
            "['opentelemetry.exporter.otlp.proto.http.trace_exporter']",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
            "TracerProvider ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,"
            "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
            "localParentNotSampled:AlwaysOffSampler}\n"
            "['opentelemetry.exporter.otlp.proto.grpc.trace_exporter']",
        ),
    ],
)
def test_the_exporter_and_sampler_come_from_the_standard_variables(
    env: dict[str, str], shown: str
) -> None:
    # A process of its own: the tracer provider is installed once per process.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", _SHOW_TRACING],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == shown
