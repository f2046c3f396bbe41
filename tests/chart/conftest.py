"""Shared helpers and fixtures of the chart checks (tests/chart/*), all offline.

The chart is deploy/helm/trellis; it is rendered with the Helm SDK (helm_python) as release
RELEASE in namespace NAMESPACE, hooks and `helm test` Pods included (NOTES.txt is kept apart).

Fixtures
  renders            session: {value-set name: Render} for every deploy/helm/trellis/ci/*.yaml
                     ("minimal", "production", ...), each rendered once per session.

Helpers (import them: `from tests.chart.conftest import render_chart, Render`)
  render_chart(values)    render with any values; raises helm_python.HelmValuesError (schema)
                          or HelmRenderError (a template's `fail`/`required`)
  load_values(name)       the values of ci/<name>.yaml
  merge(base, override)   a deep merge of two values dicts (override wins), for test overrides
  validate_custom_resource(doc)
                          a ServiceMonitor or PrometheusRule against the pydantic models of the
                          prometheus-operator CRDs, unknown fields rejected (as the API
                          server's strict field validation); CUSTOM_RESOURCES lists the kinds
  Render                  .docs (every manifest), .values (the merged values the render used),
                          .notes, .of_kind(kind), .get(kind, name), .pod_specs()
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring
from helm_python import Chart

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy/helm/trellis"
CI_DIR = CHART_DIR / "ci"
RELEASE = "trellis"
NAMESPACE = "crm"
# The lowest and highest Kubernetes versions we support.
K8S_VERSIONS = ("1.29", "1.35")
CI_SETS = sorted(p.stem for p in CI_DIR.glob("*.yaml"))

Manifest = dict[str, Any]


@functools.cache
def load_chart() -> Chart:
    """The chart, loaded once per process (charts are immutable and thread-safe)."""
    return Chart.load(CHART_DIR)


def load_values(name: str) -> dict[str, Any]:
    """The values of ci/<name>.yaml."""
    values: dict[str, Any] = yaml.safe_load((CI_DIR / f"{name}.yaml").read_text()) or {}
    return values


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A deep merge of values (override wins; lists are replaced, not appended)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Render:
    values: dict[str, Any]
    """The values the render used: chart defaults coalesced with the overrides."""
    docs: list[Manifest]
    notes: str

    def of_kind(self, kind: str) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.of_kind(kind))

    def pod_specs(self) -> Iterator[tuple[Manifest, Manifest, dict[str, str]]]:
        """(owner manifest, pod spec, pod labels) of every Deployment, Job and bare Pod."""
        for doc in self.docs:
            if doc["kind"] in ("Deployment", "Job"):
                template = doc["spec"]["template"]
                yield doc, template["spec"], template["metadata"].get("labels", {})
            elif doc["kind"] == "Pod":
                yield doc, doc["spec"], doc["metadata"].get("labels", {})


def render_chart(values: dict[str, Any] | None = None) -> Render:
    """Render the chart offline with `values` over its defaults."""
    chart = load_chart()
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    docs: list[Manifest] = []
    notes = ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: a manifest that is not a mapping"
                docs.append(doc)
    return Render(values=chart.merge_values(values or {}), docs=docs, notes=notes)


# The custom resources the chart renders, by (apiVersion, kind): kubernetes-validate knows only
# the built-in kinds, so these are checked against the models of their CRDs.
CUSTOM_RESOURCES: dict[tuple[str, str], type[pydantic.BaseModel]] = {
    (model.gvk().api_version, model.gvk().kind): model
    for model in (monitoring.ServiceMonitor, monitoring.PrometheusRule)
}


def validate_custom_resource(doc: Manifest) -> None:
    """Validate a custom resource against its CRD's model: types, enums, patterns and required
    fields, and no field the CRD lacks. Raises pydantic.ValidationError naming the path."""
    model = CUSTOM_RESOURCES[(doc["apiVersion"], doc["kind"])]
    # The models ignore unknown keys by default; the API server's strict validation rejects them.
    validated = model.model_validate(doc, extra="forbid")
    # Lax validation also converts some values (the string "true" for a boolean) that the API
    # server refuses: whatever the model had to change shows up in its dump.
    dumped = validated.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dumped == doc, f"{doc['kind']}/{doc['metadata']['name']}: values the CRD converts"


@pytest.fixture(scope="session")
def renders() -> dict[str, Render]:
    """Every ci/*.yaml value set, rendered once per session."""
    return {name: render_chart(load_values(name)) for name in CI_SETS}
