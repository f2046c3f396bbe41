"""Alert rules, their promtool unit tests, their runbooks, and the Grafana dashboard.

- deploy/helm/trellis/files/prometheus-rules.yaml passes `promtool check rules` and fits the
  PrometheusRule CRD's model (unknown keys rejected); its unit tests
  (deploy/prometheus/rules_test.yaml) pass `promtool test rules` and show every alert both
  firing and quiet;
- every alert carries severity, summary, description and a runbook_url whose anchor is a
  heading of docs/operations.md;
- every metric the rules and the dashboard query is one the services expose (the contract);
  the dashboard is Grafana JSON whose queries are valid PromQL.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from tests.chart.conftest import CUSTOM_RESOURCES, validate_custom_resource

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/helm/trellis/files/prometheus-rules.yaml"
RULES_TEST = ROOT / "deploy/prometheus/rules_test.yaml"
DASHBOARD = ROOT / "deploy/helm/trellis/files/dashboard.json"
OPERATIONS = ROOT / "docs/operations.md"

# The metric series the services expose (or will: webhooks from notify, SLAs from support),
# as listed in the Kubernetes contract (issue 3). Histograms count by their `_bucket` series.
CONTRACT_METRICS = frozenset(
    {
        "trellis_grpc_server_requests_total",
        "trellis_grpc_server_request_duration_seconds_bucket",
        "trellis_http_requests_total",
        "trellis_http_request_duration_seconds_bucket",
        "trellis_outbox_backlog_events",
        "trellis_outbox_published_events_total",
        "trellis_outbox_publish_latency_seconds_bucket",
        "trellis_consumer_messages_total",
        "trellis_consumer_pending_messages",
        "trellis_dead_letter_messages_total",
        "trellis_rate_limited_requests_total",
        "trellis_db_pool_connections",
        "trellis_db_pool_idle_connections",
        "trellis_db_pool_waiting_requests",
        "trellis_webhook_deliveries_total",
        "trellis_sla_breaches_total",
        "trellis_tickets_sla_checked_total",
    }
)
METRIC_NAME = re.compile(r"trellis_[a-z_]+")
# Recording rules are named level:metric:operations; the metric part is not a real series.
RECORDED_NAME = re.compile(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")
RUNBOOK_PREFIX = "docs/operations.md#"
# The areas issue 3 asks alerts for; each must be covered by some alert's expression.
REQUIRED_COVERAGE = {
    "error rate (gRPC)": "trellis_grpc_server_requests_total",
    "error rate (HTTP)": "trellis_http_requests_total",
    "latency (gRPC)": "trellis_grpc_server_request_duration_seconds_bucket",
    "latency (HTTP)": "trellis_http_request_duration_seconds_bucket",
    "outbox backlog": "trellis_outbox_backlog_events",
    "consumer lag": "trellis_consumer_pending_messages",
    "dead letters": "trellis_dead_letter_messages_total",
    "webhook failures": "trellis_webhook_deliveries_total",
    "SLA breach rate": "trellis_sla_breaches_total",
    "target down": "up",
}


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    assert found, (
        "promtool is missing: `make test` installs it (Debian/Ubuntu: apt-get install prometheus)"
    )
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    )


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return yaml.safe_load(path.read_text())


def rule_groups() -> list[dict[str, Any]]:
    doc = load_yaml(RULES)
    assert isinstance(doc, dict), "the rules file must be a mapping with `groups:`"
    assert set(doc) == {"groups"}, "the rules file holds only `groups:` (embedded under spec:)"
    groups: list[dict[str, Any]] = doc["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded() -> dict[str, str]:
    """Recording rule name -> its expression."""
    return {
        rule["record"]: rule["expr"]
        for group in rule_groups()
        for rule in group["rules"]
        if "record" in rule
    }


def expand(expr: str, records: dict[str, str], depth: int = 0) -> str:
    """The expression with recorded series replaced by what they record (for coverage)."""
    assert depth < 10, "recording rules refer to each other in a loop"
    out = expr
    for name, inner in records.items():
        if name in out:
            out = out.replace(name, f"({expand(inner, records, depth + 1)})")
    return out


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation (not - or _) dropped,
    spaces to -."""
    text = re.sub(r"[`*~]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def operations_anchors() -> set[str]:
    assert OPERATIONS.is_file(), "docs/operations.md is missing"
    anchors: set[str] = set()
    in_code = False
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            anchors.add(github_anchor(m.group(1)))
    return anchors


# ---------------------------------------------------------------------------------- promtool


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}{result.stderr}"


def test_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}"


def test_unit_tests_use_the_chart_rules_file() -> None:
    doc = load_yaml(RULES_TEST)
    files = [(RULES_TEST.parent / f).resolve() for f in doc["rule_files"]]
    assert files == [RULES.resolve()]


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    doc = load_yaml(RULES_TEST)
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in doc["tests"]:
        for case in group.get("alert_rule_test") or []:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never shown firing in rules_test.yaml"
    assert names - quiet == set(), "alerts never shown quiet (exp_alerts: []) in rules_test.yaml"
    assert (firing | quiet) - names == set(), "rules_test.yaml tests alerts that do not exist"


# ---------------------------------------------------------------------------------- rule content


def test_alert_names_are_unique_and_cover_what_issue_3_asks() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    records = recorded()
    used = {expand(a["expr"], records) for a in alerts()}
    missing = [
        area
        for area, metric in REQUIRED_COVERAGE.items()
        if not any(re.search(rf"\b{metric}\b", expr) for expr in used)
    ]
    assert missing == [], f"no alert covers: {missing}"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: str(a["alert"]))
def test_alert_has_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    assert alert.get("labels", {}).get("severity") in {"critical", "warning", "info"}
    annotations = alert.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{alert['alert']} has no {key}"
    url = annotations["runbook_url"]
    assert url.startswith(RUNBOOK_PREFIX), (
        f"{alert['alert']}: runbook_url must be {RUNBOOK_PREFIX}…"
    )
    anchor = url.removeprefix(RUNBOOK_PREFIX)
    assert anchor in operations_anchors(), (
        f"{alert['alert']}: docs/operations.md has no heading with anchor #{anchor}"
    )


def test_each_alert_has_its_own_runbook() -> None:
    urls = [a["annotations"]["runbook_url"] for a in alerts()]
    assert len(urls) == len(set(urls)), "two alerts share a runbook section"


def test_rules_have_no_helm_templating() -> None:
    # Go templates in annotations ({{ $labels.x }}) are Prometheus's; Helm's would be
    # {{ .Values… }}, {{ include … }} and so on, and the chart embeds this file verbatim.
    helm = re.findall(
        r"{{-?\s*(?:\.|include|template|tpl|if|range|with|toYaml)\b", RULES.read_text()
    )
    assert helm == []


def test_rules_aggregate_by_namespace_and_service() -> None:
    records = recorded()
    for name, expr in records.items():
        assert name.startswith(("namespace_service:", "namespace_service_consumer:")), name
        assert "by (namespace, service" in expand(expr, records), (
            f"{name} must keep the `namespace` and `service` labels (one series per release's service)"
        )


def test_rules_query_only_contract_metrics() -> None:
    records = recorded()
    text = " ".join([*records.values(), *(a["expr"] for a in alerts())])
    for name in RECORDED_NAME.findall(text):
        assert name in records, f"{name} is used but not recorded"
    stripped = RECORDED_NAME.sub("", text)
    unknown = set(METRIC_NAME.findall(stripped)) - CONTRACT_METRICS
    assert unknown == set(), f"metrics not in the contract: {sorted(unknown)}"


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule groups as the chart's PrometheusRule carries them."""
    api_version, kind = next(k for k in CUSTOM_RESOURCES if k[1] == "PrometheusRule")
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "trellis", "namespace": "crm"},
        "spec": {"groups": groups},
    }


def test_rules_fit_the_prometheusrule_crd() -> None:
    validate_custom_resource(prometheus_rule(rule_groups()))


def test_a_mistake_in_a_rule_is_caught() -> None:
    groups = rule_groups()
    groups[-1]["rules"][0]["fro"] = groups[-1]["rules"][0].pop("for")
    with pytest.raises(pydantic.ValidationError, match=r"spec\.groups\.1\.rules\.0\.fro\n"):
        validate_custom_resource(prometheus_rule(groups))


# ---------------------------------------------------------------------------------- dashboard


def dashboard() -> dict[str, Any]:
    assert DASHBOARD.is_file(), "dashboard.json is missing"
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[str]:
    return [t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]


def test_dashboard_identity_and_variables() -> None:
    dash = dashboard()
    assert dash["uid"] == "trellis-overview"
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["type"] == "query"
    assert variables["service"]["type"] == "query"
    assert "$namespace" in variables["service"]["query"]
    ids = [p["id"] for p in panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_panels_use_the_datasource_and_filter_by_namespace_and_service() -> None:
    for panel in panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'namespace="$namespace", service=~"$service"' in target["expr"], panel["title"]


def test_dashboard_covers_the_areas_asked_for() -> None:
    used = set(METRIC_NAME.findall(" ".join(queries())))
    # request rate/errors/latency (gRPC, HTTP), outbox backlog and publish latency, consumer
    # lag and outcomes, dead letters, DB pools, rate limits, webhooks, SLA breaches:
    assert used == CONTRACT_METRICS


def test_dashboard_queries_only_contract_metrics() -> None:
    names = set(METRIC_NAME.findall(DASHBOARD.read_text()))
    assert names, "the dashboard queries no trellis metric"
    assert names - CONTRACT_METRICS == set(), "metric names the services do not expose"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule expressions: check each query as a recording rule, with Grafana's
    # variables replaced by values they take.
    rules = []
    for i, expr in enumerate(queries()):
        concrete = (
            expr.replace("$__rate_interval", "5m")
            .replace("$namespace", "crm")
            .replace("$service", ".*")
        )
        assert "$" not in concrete, f"unknown variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}:check", "expr": concrete})
    file = tmp_path / "dashboard-queries.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(file))
    assert result.returncode == 0, f"invalid dashboard PromQL:\n{result.stdout}{result.stderr}"
