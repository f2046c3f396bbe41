"""Wiring only: what the chassis needs to run the notify service."""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver

from crm.notify.v1 import notify_pb2, notify_pb2_grpc
from crmkit.client import Callee
from crmkit.clock import Clock, system_clock
from crmkit.consumer import Consumer
from crmkit.migrations import migrations_dir
from crmkit.periodic import Periodic
from crmkit.service import Runtime, ServiceDefinition, Worker
from trellis_notify import audience, campaigns, events, rule_store, unsubscribe
from trellis_notify.api import NotifyApi
from trellis_notify.config import NotifySettings
from trellis_notify.dispatcher import Dispatcher
from trellis_notify.domain import RetryPolicy
from trellis_notify.mailer import Mailer, Smtp
from trellis_notify.sender import Sender
from trellis_notify.unsubscribe import Links, PublicHttp

log = logging.getLogger(__name__)

# Packaged in the wheel (the image); services/notify/migrations in a source checkout.
MIGRATIONS = migrations_dir(__file__)


def _contacts(runtime: Runtime, settings: NotifySettings) -> campaigns.ListPage | None:
    """How campaigns read a filter's contacts: the contacts service, called as notify itself
    (NOTIFY_CONTACTS_ADDR, INTERNAL_TOKEN_PRIVATE_KEY); None when either is missing."""
    address, key = settings.callees().get("contacts"), settings.signing_key()
    if address is None or key is None:
        log.warning("no contacts service or own key: campaigns by filter cannot be resolved")
        return None
    contacts = Callee("contacts", address, settings.contacts_timeout_seconds, own_key=key)
    runtime.on_stop.append(contacts.close)
    return campaigns.contacts_lister(contacts)


def definition(
    clock: Clock = system_clock, resolver: AbstractResolver | None = None
) -> ServiceDefinition:
    """The service; tests give it a clock they move and a resolver of their own names."""

    async def wire(runtime: Runtime) -> list[Worker]:
        settings = runtime.settings
        assert isinstance(settings, NotifySettings)
        assert runtime.js is not None  # notify uses the bus
        links = Links(
            settings.unsubscribe_key.get_secret_value().encode(), settings.public_base_url()
        )
        notify_pb2_grpc.add_NotifyServiceServicer_to_server(
            NotifyApi(runtime.pool, runtime.js, settings, clock, links), runtime.server
        )
        sender = Sender(
            allow_private=settings.webhook_allow_private,
            timeout=settings.webhook_timeout_seconds,
            concurrency=settings.webhook_concurrency,
            per_endpoint=settings.webhook_per_endpoint_concurrency,
            resolver=resolver,
        )
        dispatcher = Dispatcher(
            runtime.pool,
            sender,
            RetryPolicy(settings.webhook_retry_schedule, settings.webhook_retry_jitter),
            clock=clock,
            concurrency=settings.webhook_concurrency,
            per_webhook=settings.webhook_per_endpoint_concurrency,
            poll_interval=settings.webhook_poll_seconds,
            lease=timedelta(seconds=settings.webhook_timeout_seconds + 60),
        )
        fanout = Consumer(
            runtime.js,
            runtime.pool,
            name="notify-webhooks",
            filter_subjects=[events.EVERY_EVENT],
            handler=events.webhook_fanout(clock),
        )
        projection = Consumer(
            runtime.js,
            runtime.pool,
            name="notify-contacts",
            filter_subjects=[audience.CONTACTS, audience.CONSENTS],
            handler=audience.projection_handler(),
        )
        password = settings.smtp_password
        smtp_host, smtp_port = settings.smtp_address()
        mailer = Mailer(
            runtime.pool,
            Smtp(
                host=smtp_host,
                port=smtp_port,
                username=settings.smtp_username,
                password=password.get_secret_value() if password else None,
                tls=settings.smtp_tls,
                timeout=settings.smtp_timeout_seconds,
                sender=settings.mail_from,
                message_id_domain=urlsplit(settings.public_base_url()).hostname or "trellis",
            ),
            links,
            RetryPolicy(settings.mail_retry_schedule, settings.webhook_retry_jitter),
            clock=clock,
            concurrency=settings.mail_concurrency,
            poll_interval=settings.webhook_poll_seconds,
        )
        public = PublicHttp(
            unsubscribe.routes(links, runtime.pool), settings.bind_host, settings.http_port
        )
        firing = Consumer(
            runtime.js,
            runtime.pool,
            name="notify-rules",
            filter_subjects=[events.EVERY_EVENT],
            handler=rule_store.firing(links, clock),
        )
        runner = campaigns.CampaignRunner(runtime.pool, links, _contacts(runtime, settings), clock)
        ticker = Periodic("campaigns", settings.campaign_tick_seconds, runner.tick)
        return [fanout, projection, firing, dispatcher, mailer, public, ticker]

    return ServiceDefinition(
        name="notify",
        migrations_dir=MIGRATIONS,
        grpc_services=[notify_pb2.DESCRIPTOR.services_by_name["NotifyService"].full_name],
        wire=wire,
    )


DEFINITION = definition()
