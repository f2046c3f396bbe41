"""One request forms one trace across processes, exported as the standard OTEL_* variables say:
the real services export over OTLP/HTTP to a receiver in this test (no trace backend here)."""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.helpers import Platform, new_tenant
from trellis_devstack.infra import Nats, Postgres, free_port
from trellis_devstack.stack import Stack


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: what a collector would get, by service."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), _Handler)

    def of_trace(self, trace_id: str) -> list[tuple[str, Span]]:
        with self.lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id.hex() == trace_id]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in export.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.server.spans += [(attrs["service.name"], s) for s in scope.spans]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def traced(
    postgres: Postgres,
    nats_server: Nats,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    stack = Stack.ephemeral(
        postgres,
        nats_server.url,
        db_prefix=f"tr_{uuid.uuid4().hex[:6]}_",
        extra_env={
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
        },
    )
    running = Platform(stack, tmp_path_factory.mktemp("traced-logs"))
    running.start_all()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop_all()


async def test_a_write_is_one_trace_from_the_gateway_to_the_published_event(
    traced: Platform, receiver: Receiver
) -> None:
    tenant = new_tenant(traced)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    async with tenant.client() as api:
        made = await api.post(
            "/v1/contacts",
            json={"first_name": "Trace"},
            headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
        )
    assert made.status_code == 201, made.text
    created = f"crm.events.{tenant.id}.contacts.contact.created publish"

    spans: list[tuple[str, Span]] = []
    for _ in range(200):  # until the last hop and the gateway's own span are exported
        spans = receiver.of_trace(trace_id)
        names = {(svc, s.name) for svc, s in spans}
        if ("contacts", created) in names and ("gateway", "POST /v1/contacts") in names:
            break
        await asyncio.sleep(0.05)
    by_name = {(svc, s.name): s for svc, s in spans}
    rpc = "/crm.contacts.v1.ContactsService/CreateContact"
    request = by_name[("gateway", "POST /v1/contacts")]
    call = by_name[("gateway", rpc)]
    served = by_name[("contacts", rpc)]
    producer = by_name[("contacts", created)]
    # Each hop is the child of the one before: the caller's span, the gateway's request,
    # its call to contacts, contacts serving it; the publish continues the trace too.
    assert request.parent_span_id.hex() == caller_span
    assert (call.kind, call.parent_span_id) == (Span.SPAN_KIND_CLIENT, request.span_id)
    assert (served.kind, served.parent_span_id) == (Span.SPAN_KIND_SERVER, call.span_id)
    assert producer.kind == Span.SPAN_KIND_PRODUCER
    assert producer.parent_span_id in {s.span_id for svc, s in spans if svc == "contacts"}
