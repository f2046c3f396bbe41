"""Metrics every process exposes, checked by Prometheus's own promtool."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest

from tests.helpers import Platform, Tenant

_GET_CONTACT = (
    'grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="GetContact",'
    'grpc_service="crm.contacts.v1.ContactsService",grpc_type="unary"}'
)


def _scrape(platform: Platform, service: str) -> str:
    port = platform.stack.ports[service]["metrics"]
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("service", ["gateway", "contacts"])
def test_metrics_pass_promtool(platform: Platform, service: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (Debian package prometheus)"
    text = _scrape(platform, service)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


async def test_a_grpc_call_counts_with_method_and_code(platform: Platform, tenant: Tenant) -> None:
    before = _sample(_scrape(platform, "contacts"), _GET_CONTACT)
    async with tenant.client() as api:
        for _ in range(3):
            r = await api.get("/v1/contacts/01900000-0000-7000-8000-000000000000")
            assert r.status_code == 404
    after = _sample(_scrape(platform, "contacts"), _GET_CONTACT)
    assert after - before == 3
    gateway = _scrape(platform, "gateway")
    assert re.search(
        r'http_server_request_duration_seconds_count\{http_request_method="GET",'
        r'http_response_status_code="404",http_route="/v1/contacts/\{id\}"\} [1-9]',
        gateway,
    )


def _families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_each_process_exposes_only_the_metrics_of_the_parts_it_runs(platform: Platform) -> None:
    gateway, contacts = _scrape(platform, "gateway"), _scrape(platform, "contacts")
    assert "http_server_request_duration_seconds" in _families(gateway)
    assert "trellis_outbox_backlog_events" in _families(contacts)
    # The gateway has no outbox; contacts serves no HTTP; neither has counters' _created twins.
    assert not {f for f in _families(gateway) if f.startswith("trellis_outbox")}
    assert "http_server_request_duration_seconds" not in _families(contacts)
    for text in (gateway, contacts):
        assert "_created" not in text
