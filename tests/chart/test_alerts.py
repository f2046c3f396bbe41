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
from typing import Any, NamedTuple

import promql_parser
import pydantic
import pytest
import yaml

from tests.chart.conftest import CUSTOM_RESOURCES, validate_custom_resource

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/helm/trellis/files/prometheus-rules.yaml"
RULES_TEST = ROOT / "deploy/prometheus/rules_test.yaml"
DASHBOARD = ROOT / "deploy/helm/trellis/files/dashboard.json"
OPERATIONS = ROOT / "docs/operations.md"


class Metric(NamedTuple):
    kind: str
    labels: frozenset[str]


def metric(kind: str, *labels: str) -> Metric:
    return Metric(kind, frozenset(labels))


# The metrics the services expose (issue 6; webhooks come with notify, SLAs with support).
# gRPC and HTTP follow the names stock dashboards know: the gRPC ecosystem's and
# OpenTelemetry's semantic conventions. No `_created` series are exposed.
CONTRACT: dict[str, Metric] = {
    "grpc_server_handled_total": metric(
        "counter", "grpc_service", "grpc_method", "grpc_type", "grpc_code"
    ),
    "grpc_server_handling_seconds": metric("histogram", "grpc_service", "grpc_method", "grpc_type"),
    "http_server_request_duration_seconds": metric(
        "histogram", "http_request_method", "http_route", "http_response_status_code"
    ),
    "trellis_outbox_backlog_events": metric("gauge"),
    "trellis_outbox_published_events_total": metric("counter"),
    "trellis_outbox_publish_latency_seconds": metric("histogram"),
    "trellis_consumer_messages_total": metric("counter", "consumer", "outcome"),
    "trellis_consumer_pending_messages": metric("gauge", "consumer"),
    "trellis_dead_letter_messages_total": metric("counter", "consumer"),
    "trellis_projection_stale_events_total": metric("counter", "projection"),
    "trellis_rate_limited_requests_total": metric("counter", "limit"),
    "trellis_db_pool_connections": metric("gauge", "pool"),
    "trellis_db_pool_idle_connections": metric("gauge", "pool"),
    "trellis_db_pool_waiting_requests": metric("gauge", "pool"),
    "trellis_webhook_deliveries_total": metric("counter", "outcome"),
    "trellis_sla_breaches_total": metric("counter", "policy"),
    "trellis_tickets_sla_checked_total": metric("counter"),
}
# Labels Prometheus adds to every series it scrapes (`service` by the chart's ServiceMonitor).
TARGET_LABELS = frozenset({"namespace", "service", "job", "instance"})


def contract_series() -> dict[str, frozenset[str]]:
    """Every series name the contract exposes, with its own labels: a histogram is its
    _bucket (with le), _count and _sum series; `up` is Prometheus's own."""
    series = {"up": frozenset[str]()}
    for name, (kind, labels) in CONTRACT.items():
        if kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_count"] = series[f"{name}_sum"] = labels
        else:
            series[name] = labels
    return series


SERIES = contract_series()


def family(series: str) -> str:
    """The contract metric a series belongs to (a histogram's _bucket belongs to it)."""
    base = re.sub(r"_(bucket|count|sum)$", "", series)
    if base in CONTRACT and CONTRACT[base].kind == "histogram":
        return base
    return series


def level_labels(recorded_name: str) -> frozenset[str]:
    """The labels a recorded series keeps, as its level names them: namespace_service:..."""
    return frozenset(recorded_name.split(":")[0].split("_"))


def concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values they take."""
    out = expr.replace("$__rate_interval", "5m").replace("$namespace", "crm")
    out = out.replace("$service", ".*")
    assert "$" not in out, f"unknown variable in {expr}"
    return out


def tree(expr: str) -> promql_parser.Expr:
    return promql_parser.parse(concrete(expr))


def nodes(root: promql_parser.Expr) -> list[promql_parser.Expr]:
    found: list[promql_parser.Expr] = []
    promql_parser.walk(root, found.append)
    return found


def selected(root: promql_parser.Expr) -> set[str]:
    """The names of the series an expression selects (recorded ones included)."""
    return {n.name for n in nodes(root) if isinstance(n, promql_parser.VectorSelector) and n.name}


def contract_violations(expr: str, records: dict[str, str]) -> list[str]:
    """What an expression asks of the services that the contract does not give: unknown
    series, labels a series does not have, grouping by labels none of its series have."""
    problems: list[str] = []
    for node in nodes(tree(expr)):
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or ""
            if ":" in name:
                if name not in records:
                    problems.append(f"{name} is not recorded")
                continue
            if name not in SERIES:
                problems.append(f"{name} is not a contract series")
                continue
            for matcher in node.matchers.matchers:
                if matcher.name not in SERIES[name] | TARGET_LABELS:
                    problems.append(f"{name} has no label {matcher.name}")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier:
            inner = selected(node.expr)
            known = TARGET_LABELS.union(
                *(level_labels(n) if ":" in n else SERIES.get(n, frozenset()) for n in inner)
            )
            unknown = sorted(set(node.modifier.labels) - known)
            if unknown:
                problems.append(f"grouping by {unknown}, which {sorted(inner)} do not have")
    return problems


RUNBOOK_PREFIX = "docs/operations.md#"
# The areas issue 3 asks alerts for; each must be covered by some alert's expression.
REQUIRED_COVERAGE = {
    "error rate (gRPC)": "grpc_server_handled_total",
    "error rate (HTTP)": "http_server_request_duration_seconds_count",
    "latency (gRPC)": "grpc_server_handling_seconds_bucket",
    "latency (HTTP)": "http_server_request_duration_seconds_bucket",
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


def series_behind(expr: str, records: dict[str, str], depth: int = 0) -> set[str]:
    """The scraped series an expression reads, through the recording rules it uses."""
    assert depth < 10, "recording rules refer to each other in a loop"
    found: set[str] = set()
    for name in selected(tree(expr)):
        if name in records:
            found |= series_behind(records[name], records, depth + 1)
        else:
            found.add(name)
    return found


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


def test_unit_tests_feed_contract_series() -> None:
    """The synthetic input is what the services expose: names and labels of the contract."""
    doc = load_yaml(RULES_TEST)
    for group in doc["tests"]:
        for item in group["input_series"]:
            assert contract_violations(item["series"], {}) == [], item["series"]


# ---------------------------------------------------------------------------------- rule content


def test_alert_names_are_unique_and_cover_what_issue_3_asks() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    records = recorded()
    used = set().union(*(series_behind(a["expr"], records) for a in alerts()))
    missing = [area for area, series in REQUIRED_COVERAGE.items() if series not in used]
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


def runbook_queries() -> list[str]:
    """The PromQL of docs/operations.md: each line of a ```promql block is one query."""
    blocks = re.findall(r"^```promql\n(.*?)^```", OPERATIONS.read_text(), re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_runbook_queries_ask_only_for_contract_metrics() -> None:
    # Kubernetes' own series (cAdvisor's container_*, kube-state-metrics' kube_*) are not ours.
    ours = [
        query
        for query in runbook_queries()
        if not any(re.match(r"(container|kube)_", name) for name in selected(tree(query)))
    ]
    assert len(ours) >= 10, "docs/operations.md: the runbooks' ```promql blocks"
    for query in ours:
        assert contract_violations(query, recorded()) == [], query


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


def test_recorded_series_keep_the_labels_their_level_names() -> None:
    """namespace_service:...: one series per release's service, so several releases in one
    Prometheus stay apart; the level is what contract_violations trusts them to carry."""
    records = recorded()
    for name, expr in records.items():
        level = level_labels(name)
        assert {"namespace", "service"} <= level, name
        root = tree(expr)
        groupings = [n for n in nodes(root) if isinstance(n, promql_parser.AggregateExpr)]
        if not groupings:
            assert selected(root) <= set(records), f"{name} aggregates nothing"
        for node in groupings:
            assert node.modifier is not None, f"{name}: {node} drops every label"
            assert node.modifier.type == promql_parser.AggModifierType.By, name
            assert level <= set(node.modifier.labels), f"{name}: {node} drops {level}"


def test_rules_query_only_contract_metrics() -> None:
    records = recorded()
    for expr in [*records.values(), *(a["expr"] for a in alerts())]:
        assert contract_violations(expr, records) == [], expr


CONTRACT_MISTAKES = [
    pytest.param("rate(trellis_grpc_server_requests_total[5m])", "is not a contract", id="old"),
    pytest.param("rate(grpc_server_handled_created[5m])", "is not a contract", id="created"),
    pytest.param(
        'rate(http_server_request_duration_seconds_count{status=~"5.."}[5m])',
        "has no label status",
        id="old-label",
    ),
    pytest.param(
        "sum by (service, method) (rate(http_server_request_duration_seconds_count[5m]))",
        "grouping by ['method']",
        id="old-grouping",
    ),
    pytest.param("namespace_service:grpc_server_calls:rate5m > 1", "not recorded", id="unrecorded"),
]


@pytest.mark.parametrize(("expr", "problem"), CONTRACT_MISTAKES)
def test_contract_check_catches(expr: str, problem: str) -> None:
    problems = contract_violations(expr, recorded())
    assert len(problems) == 1, problems
    assert problem in problems[0]


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
    """The PromQL of every panel and of the variables' label_values(<selector>, <label>)."""
    dash = dashboard()
    exprs = [t["expr"] for p in panels(dash["panels"]) for t in p.get("targets", [])]
    for variable in dash["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"])
            assert found, f"{variable['name']}: not a label_values query"
            exprs.append(found.group(1))
    return exprs


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


def test_dashboard_shows_every_contract_metric() -> None:
    # request rate/errors/latency (gRPC, HTTP), outbox backlog and publish latency, consumer
    # lag and outcomes, dead letters, stale projection events, DB pools, rate limits,
    # webhooks, SLA breaches:
    used = {family(name) for expr in queries() for name in selected(tree(expr))}
    assert used == set(CONTRACT)


def test_dashboard_queries_only_contract_metrics() -> None:
    for expr in queries():
        assert contract_violations(expr, {}) == [], expr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Prometheus's own parser, through promtool: each query checked as a recording rule.
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": concrete(expr)}
        for i, expr in enumerate(queries())
    ]
    file = tmp_path / "dashboard-queries.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(file))
    assert result.returncode == 0, f"invalid dashboard PromQL:\n{result.stdout}{result.stderr}"
