"""Small query helpers shared by the stores."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message

from crm.common.v1 import common_pb2
from crmkit import db, outbox
from crmkit.errors import NotFound
from crmkit.ids import canonical_uuid


def known_id(kind: str, value: str) -> str:
    """An id that cannot exist is simply not found: the same answer as another tenant's id."""
    found = canonical_uuid(value.strip())
    if found is None:
        raise NotFound(kind, value)
    return found


def metadata(tenant_id: str, actor: str, at: datetime) -> common_pb2.EventMetadata:
    # event_id stays empty: write_event makes the id and sends it as the CloudEvents ce-id.
    meta = common_pb2.EventMetadata(tenant_id=tenant_id, actor=actor)
    meta.occurred_at.FromDatetime(at)
    return meta


async def event(
    conn: db.Conn, tenant_id: str, record_id: str, version: int, message: Message
) -> None:
    await outbox.write_event(
        conn, message, tenant_id=tenant_id, record_id=record_id, record_version=version
    )
