"""The body of a webhook: the event as a CloudEvent in JSON structured mode.

On the bus an event is a binary-mode CloudEvent (attributes in headers, data in the body);
a partner receiving a webhook gets every attribute and the data in one JSON document instead,
the form CloudEvents SDKs read from an HTTP body of type application/cloudevents+json.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from crmkit import bus
from crmkit.consumer import Event
from crmkit.ids import new_id

CONTENT_TYPE = "application/cloudevents+json"
PING_TYPE = "crm.notify.webhook.ping.v1"
SOURCE = "/trellis/notify"


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def structured(event: Event) -> bytes:
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
        "subject": event.subject,
        "tenantid": event.tenant_id,
        "recordversion": event.record_version,
        "datacontenttype": "application/json",
        "data": event.data,
    }
    schema = event.headers.get("ce-dataschema")
    if schema:
        document["dataschema"] = schema
    return _encode(document)


def ping(tenant_id: str, webhook_id: str, at: datetime) -> tuple[str, bytes]:
    """A test event for one endpoint: its id and body."""
    event_id = new_id()
    return event_id, _encode(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": SOURCE,
            "type": PING_TYPE,
            "time": bus.rfc3339(at),
            "subject": webhook_id,
            "tenantid": tenant_id,
            "recordversion": 0,
            "datacontenttype": "application/json",
            "data": {"webhook_id": webhook_id},
        }
    )
