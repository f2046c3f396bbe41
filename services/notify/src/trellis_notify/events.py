"""Notify's consumers of the platform's events."""

from __future__ import annotations

from crmkit import db
from crmkit.clock import Clock
from crmkit.consumer import Event, Handler
from trellis_notify import store

# Every event of every service: contacts now, sales and support as they land.
EVERY_EVENT = "crm.events.>"


def webhook_fanout(clock: Clock) -> Handler:
    """Queue each event for the tenant's endpoints that subscribe to its type, in the
    consumer's inbox transaction: an event redelivered is queued once."""

    async def handle(event: Event, conn: db.Conn) -> None:
        await store.enqueue_event(conn, event, clock())

    return handle
