"""OpenTelemetry set-up, and trace context through NATS headers (no contrib package does that)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextvars import Token

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from crmkit.config import TracingSettings


def _exporter(settings: TracingSettings) -> SpanExporter | None:
    """The OTLP exporter the standard OTEL_EXPORTER_OTLP_* variables ask for, if any.

    The exporters read their endpoint, headers and timeouts from the same variables
    themselves; only the protocol decides which one to build.
    """
    if not settings.exporting:
        return None
    if settings.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    return GrpcExporter()


def setup_tracing(
    service: str, settings: TracingSettings, extra: SpanProcessor | None = None
) -> TracerProvider | None:
    """Install the SDK's tracer provider once per process, when anything reads its spans.

    With no exporter (and no test processor) the API's no-op tracer stays: no span is
    recorded, yet trace context still flows from caller to service to event, so the logs
    and a partner's events keep the caller's trace id. The sampler is the SDK's, from
    OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current  # tests host several services in one process
    else:
        exporter = _exporter(settings)
        if exporter is None and extra is None:
            return None
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    if extra is not None:
        provider.add_span_processor(extra)
    if not PsycopgInstrumentor().is_instrumented_by_opentelemetry:
        PsycopgInstrumentor().instrument(enable_commenter=False)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def recording() -> bool:
    """Whether spans are recorded in this process (setup_tracing installed the SDK).

    Only then are the gRPC and ASGI instrumentations installed: without a provider they make
    no span, yet their per-call work (wrapping the call, the context, the span that is not
    recorded) is a measurable share of a request's CPU. Without them the caller's trace
    context still flows, by `attach_remote` and `inject_into`.
    """
    return isinstance(trace.get_tracer_provider(), TracerProvider)


_TRACE_HEADERS = ("traceparent", "tracestate")


def attach_remote(carrier: Mapping[str, str]) -> Token[otel_context.Context] | None:
    """Make the trace context a caller sent (W3C headers or metadata) the current one, as the
    instrumentation would; a token for `detach`, or None when the caller sent none."""
    if "traceparent" not in carrier:
        return None
    return otel_context.attach(
        propagate.extract({k: carrier[k] for k in _TRACE_HEADERS if k in carrier})
    )


def detach(token: Token[otel_context.Context] | None) -> None:
    if token is not None:
        otel_context.detach(token)


def current_traceparent() -> dict[str, str]:
    """The W3C trace context of the current span, to store beside an outbox row."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def inject_into(headers: MutableMapping[str, str]) -> None:
    propagate.inject(headers)


def context_from(headers: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))
