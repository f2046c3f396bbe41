"""Wiring only: what the chassis needs to run the support service."""

from __future__ import annotations

from datetime import timedelta

from crm.support.v1 import support_pb2, support_pb2_grpc
from crmkit.client import Callee
from crmkit.clock import Clock, system_clock
from crmkit.migrations import migrations_dir
from crmkit.service import Runtime, ServiceDefinition, Worker
from trellis_support import timers
from trellis_support.api import SupportApi
from trellis_support.config import SupportSettings
from trellis_support.events import contacts_consumer

# Packaged in the wheel (the image); services/support/migrations in a source checkout.
MIGRATIONS = migrations_dir(__file__)


def definition(clock: Clock = system_clock) -> ServiceDefinition:
    """The service, reading time from `clock` (tests pass one they can set)."""

    async def wire(runtime: Runtime) -> list[Worker]:
        settings = runtime.settings
        assert isinstance(settings, SupportSettings)
        assert runtime.js is not None  # the service uses the bus
        contacts = Callee("contacts", settings.contacts_addr, settings.contacts_timeout_seconds)
        runtime.on_stop.append(contacts.close)
        api = SupportApi(runtime.pool, contacts, clock, timedelta(days=settings.reopen_window_days))
        support_pb2_grpc.add_SupportServiceServicer_to_server(api, runtime.server)
        return [
            contacts_consumer(runtime.js, runtime.pool),
            timers.worker(runtime.pool, clock, settings.sla_check_interval_seconds),
        ]

    return ServiceDefinition(
        name="support",
        migrations_dir=MIGRATIONS,
        grpc_services=[support_pb2.DESCRIPTOR.services_by_name["SupportService"].full_name],
        wire=wire,
    )


DEFINITION = definition()
