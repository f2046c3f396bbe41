"""A service's own egress targets (`services.<name>.egress`): notify alone reaches the internet,
on the webhook and SMTP ports only, never the private ranges its webhooks must not reach."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmValuesError

from tests.chart.conftest import Render, load_values, merge, render_chart
from trellis_devstack import declaration

PRIVATE = {
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
}


def _egress(r: Render, service: str) -> list[dict[str, Any]]:
    policy = r.get("NetworkPolicy", f"trellis-{service}")
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    return rules


def _internet(rule: dict[str, Any]) -> bool:
    return any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for p in rule.get("to", []))


def test_only_notify_reaches_the_internet_on_its_ports(renders: dict[str, Render]) -> None:
    r = renders["production"]
    rules = [rule for rule in _egress(r, "notify") if _internet(rule)]
    assert sorted(p["port"] for rule in rules for p in rule["ports"]) == [443, 587]
    for rule in rules:
        (block,) = [p["ipBlock"] for p in rule["to"]]
        assert set(block["except"]) == PRIVATE
    for service in sorted(set(declaration.load().services) - {"notify"}):
        assert not [rule for rule in _egress(r, service) if _internet(rule)], service


def test_an_operator_points_smtp_at_their_relay() -> None:
    relay = [{"ipBlock": {"cidr": "203.0.113.25/32"}}]
    values = merge(
        load_values("production"),
        {"services": {"notify": {"egress": {"smtp": {"port": 465, "to": relay}}}}},
    )
    r = render_chart(values)
    smtp = [rule for rule in _egress(r, "notify") if rule.get("to") == relay]
    assert [p["port"] for rule in smtp for p in rule["ports"]] == [465]


def test_an_egress_target_needs_a_port() -> None:
    values = merge(
        load_values("production"),
        {"services": {"notify": {"egress": {"crm": {"to": []}}}}},
    )
    with pytest.raises(HelmValuesError, match="port"):
        render_chart(values)
