"""JSON log lines with the service, trace, tenant and request ids of the current context."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace

from crmkit import context

_SKIP = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        ident = context.identity.get()
        if ident is not None:
            entry["tenant_id"] = ident.tenant_id
        rid = context.request_id.get()
        if rid:
            entry["request_id"] = rid
        # Extra fields passed with `extra=` are the only other things logged: callers decide
        # what is safe, so no request bodies (PII) or secrets end up here by accident.
        entry.update({k: v for k, v in record.__dict__.items() if k not in _SKIP})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request access lines come from our own middleware, not uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
