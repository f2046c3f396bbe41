"""NATS JetStream: the connection, the two streams, subjects and the CloudEvents envelope.

Events travel in binary-mode CloudEvents 1.0 (DESIGN.md §4): the attributes are NATS headers,
the body is the event's proto3 JSON, so any partner can read them without our protos.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError

log = logging.getLogger(__name__)

STREAM = "CRM_EVENTS"
STREAM_SUBJECTS = ["crm.events.>"]
DLQ_STREAM = "CRM_DLQ"
DLQ_SUBJECTS = ["crm.dlq.>"]

# A relay that re-publishes after a lost PubAck does so within seconds; two minutes of
# Nats-Msg-Id memory covers that (and a NATS restart) without holding ids for long.
DUPLICATE_WINDOW_SECONDS = 120.0

# nats-server answers "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058

_TOKEN_FORBIDDEN = frozenset(".*> \t\r\n")


def subject_token(value: str, what: str = "value") -> str:
    # A dot or wildcard inside a token would let an event escape its tenant's subject space.
    if not value or _TOKEN_FORBIDDEN.intersection(value):
        raise ValueError(f"invalid {what} for a NATS subject token: {value!r}")
    return value


def retry_delay(failures: int, cap: float = 5.0) -> float:
    """Exponential backoff with jitter for the relay's and consumers' reconnect loops.

    The jitter keeps replicas that lost NATS (or PostgreSQL) together from retrying in step.
    """
    return random.uniform(0.5, 1.0) * min(cap, 0.25 * 2.0 ** min(failures, 10))  # noqa: S311


def event_subject(tenant_id: str, domain: str, entity: str, action: str) -> str:
    parts = ((tenant_id, "tenant id"), (domain, "domain"), (entity, "entity"), (action, "action"))
    return "crm.events." + ".".join(subject_token(v, what) for v, what in parts)


def tenant_of_subject(subject: str) -> str:
    """The tenant token of an event subject <root>.events.<tenant>.<domain>.<entity>.<action>
    (the root is `crm` in CRM_EVENTS)."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[1] != "events":
        raise ValueError(f"not an event subject: {subject!r}")
    return parts[2]


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, 'Z' suffix: what CloudEvents' `time` attribute expects."""
    if moment.tzinfo is None:
        raise ValueError("ce-time needs an aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ce_headers(
    *,
    event_id: str,
    ce_type: str,
    source: str,
    subject: str,
    tenant_id: str,
    time: datetime,
    record_version: int,
    dataschema: str,
) -> dict[str, str]:
    """CloudEvents binary-mode attributes as NATS headers, plus the stream's dedupe id.

    `ce-recordversion` (an extension) lets a consumer order one record's events without
    decoding the body. The content type goes under `Content-Type`, the name the CloudEvents
    NATS binding gives it, and `content-type`, the name SDKs reading headers as HTTP look for.
    """
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": ce_type,
        "ce-time": rfc3339(time),
        "ce-subject": subject,
        "ce-tenantid": tenant_id,
        "ce-recordversion": str(record_version),
        "ce-dataschema": dataschema,
        "Content-Type": "application/json",
        "content-type": "application/json",
        "Nats-Msg-Id": event_id,
    }


async def connect(url: str, name: str) -> NATS:
    """Connect and keep reconnecting forever: the relay and consumers ride out NATS restarts."""
    client = NATS()

    async def on_error(err: Exception) -> None:
        # While reconnecting, every failed attempt reports here; the disconnect was already
        # logged, so those would only repeat it once a second. A first connect that keeps
        # failing does warn: nothing else would say why the service is not starting.
        level = logging.DEBUG if client.is_reconnecting else logging.WARNING
        log.log(level, "nats error", extra={"nats_client": name, "error": repr(err)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected; reconnecting", extra={"nats_client": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"nats_client": name})

    async def on_close() -> None:
        log.info("nats connection closed", extra={"nats_client": name})

    await client.connect(
        servers=url,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,  # also retries the first connect: start order does not matter
        reconnect_time_wait=1,
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_close,
    )
    return client


def _stream_config(
    name: str, description: str, subjects: list[str], replicas: int, max_age_days: float
) -> StreamConfig:
    return StreamConfig(
        max_age=max_age_days * 86400,
        name=name,
        description=description,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    )


def _stream_configs(replicas: int, max_age_days: float) -> list[StreamConfig]:
    return [
        _stream_config(
            STREAM,
            "Trellis CRM domain events (CloudEvents 1.0, binary mode)",
            STREAM_SUBJECTS,
            replicas,
            max_age_days,
        ),
        # The DLQ dedupes too: a consumer that dead-letters a message and then loses its ack
        # would otherwise park the same failure twice.
        _stream_config(
            DLQ_STREAM,
            "Events consumers gave up on, with the error; re-drivable",
            DLQ_SUBJECTS,
            replicas,
            max_age_days,
        ),
    ]


async def ensure_streams(js: JetStreamContext, replicas: int, max_age_days: float = 30) -> None:
    """Create both streams, or bring them to this configuration; safe when processes race.

    The server treats a create with an identical configuration as a no-op, so the common case
    (every replica starting) costs one request per stream and cannot conflict.
    """
    for config in _stream_configs(replicas, max_age_days):
        try:
            await js.add_stream(config)
        except APIError as err:
            if err.err_code != _STREAM_NAME_IN_USE:
                raise
            await js.update_stream(config)
            log.info("stream updated", extra={"stream": config.name})
