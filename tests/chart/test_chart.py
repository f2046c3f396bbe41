"""The Helm chart (deploy/helm/trellis), checked offline on every ci/*.yaml value set.

1. Every value set renders with the Helm SDK and passes `helm lint --strict`; so do the
   defaults given the one value without a default (internalToken.publicKeys).
2. values.schema.json types every value and rejects wrong types, unknown keys (top level and
   inside a service entry) and negative counts, naming the value; cross-entry mistakes fail
   the render with a message.
3. Every manifest validates against the Kubernetes schemas (strict, lowest and highest
   supported versions); ServiceMonitor/PrometheusRule against the models of their CRDs
   (cloudcoil-models-prometheus-operator), unknown fields rejected; the CloudNativePG
   Cluster on the fields the chart relies on (no model of its CRD is published).
4. checkov finds nothing on the production-like render; every skip is an annotation in the
   chart with its reason.
5. Wiring: *_ADDR variables name rendered Services and their ports; probes target declared
   ports; selectors, PDBs, HPAs and the ServiceMonitor line up; the NetworkPolicies allow
   exactly the edges declared in values; adding a service is one values entry (plus its
   name in the callers of the services it calls) and changes nothing else.
6. Hooks: each migration Job and everything it needs are pre-install/pre-upgrade hooks,
   ordered by weight, re-created on each run; `helm test` checks the gateway's /readyz.
7. Identity-token keys: every service and migration Job trusts internalToken.publicKeys (from
   its ConfigMap), only the gateway's Deployment gets the private key (from a Secret), no
   rendered object holds a private key in clear, and each step of a key rotation renders.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml
from helm_python import Chart, HelmRenderError, HelmValuesError, lint

from crmkit import auth
from tests.chart.conftest import (
    CHART_DIR,
    CI_SETS,
    CUSTOM_RESOURCES,
    K8S_VERSIONS,
    NAMESPACE,
    RELEASE,
    Manifest,
    Render,
    load_values,
    merge,
    render_chart,
    validate_custom_resource,
)
from trellis_devstack import declaration

CHART_META: dict[str, Any] = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
APP_VERSION = str(CHART_META["appVersion"])
SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
PROD = "production"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
HOOK = "helm.sh/hook"
HOOK_WEIGHT = "helm.sh/hook-weight"
HOOK_DELETE = "helm.sh/hook-delete-policy"
SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")
# The one value without a default (the operator makes the key pair): the keys ci/minimal.yaml
# trusts. Tests that render from the defaults add it.
TRUSTED_JWKS: str = load_values("minimal")["internalToken"]["publicKeys"]
TRUSTED = {"internalToken": {"publicKeys": TRUSTED_JWKS}}


# --- helpers ---------------------------------------------------------------------------------


def fullname(name: str) -> str:
    return f"{RELEASE}-{name}"


def services(r: Render) -> dict[str, dict[str, Any]]:
    """Each service's values merged over serviceDefaults, as the templates see them."""
    defaults = r.values["serviceDefaults"]
    return {name: merge(defaults, entry) for name, entry in r.values["services"].items()}


def kebab(name: str) -> str:
    """internalTokenSigningKey -> internal-token-signing-key (the chart's default Secret names)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def env_prefix(name: str) -> str:
    return name.upper()


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def containers(pod_spec: Manifest) -> list[Manifest]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def container_env(r: Render, container: Manifest) -> dict[str, Any]:
    """A container's environment: its ConfigMaps (envFrom) then env (value or valueFrom)."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom only from ConfigMaps"
        env.update(r.get("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def deployment_of(r: Render, name: str) -> Manifest:
    return r.get("Deployment", fullname(name))


def pod_labels(doc: Manifest) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels


def hook_events(doc: Manifest) -> set[str]:
    return set(doc["metadata"].get("annotations", {}).get(HOOK, "").split(",")) - {""}


def is_hook(doc: Manifest) -> bool:
    return bool(hook_events(doc))


# --- 1. render and lint ----------------------------------------------------------------------


def test_ci_value_sets_are_the_expected_ones() -> None:
    assert {"minimal", "production", "external-secrets"} <= set(CI_SETS)


@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
@pytest.mark.parametrize("value_set", [*CI_SETS, "defaults"])
def test_value_set_lints_strict(value_set: str, kube_version: str) -> None:
    values = TRUSTED if value_set == "defaults" else load_values(value_set)
    report = lint(
        CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}.0"
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 1 is informational (only "icon is recommended"); 2+ are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("value_set", CI_SETS)
def test_value_set_renders(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    assert r.docs, "nothing rendered"
    keys = [(d["kind"], d["metadata"]["name"]) for d in r.docs]
    assert len(keys) == len(set(keys)), "two manifests share a kind and a name"
    for doc in r.docs:
        namespace = NAMESPACE
        if doc["metadata"]["name"] == fullname("dashboard"):
            # Grafana's sidecar may watch another namespace
            namespace = r.values["grafanaDashboard"]["namespace"] or NAMESPACE
        assert doc["metadata"]["namespace"] == namespace
        assert doc["metadata"]["labels"][INSTANCE_LABEL] == RELEASE
    assert f'release "{RELEASE}"' in r.notes
    for name in services(r):
        assert r.has("Deployment", fullname(name)), name


def test_defaults_render_with_the_trusted_keys_alone() -> None:
    r = render_chart(TRUSTED)
    assert {d["kind"] for d in r.docs} >= {"Deployment", "Service", "NetworkPolicy", "Job"}


def test_the_trusted_keys_are_required(tmp_path: Path) -> None:
    """No default key pair exists: without internalToken.publicKeys the schema refuses the
    values and, when it is skipped (--skip-schema-validation), the templates do."""
    with pytest.raises(HelmValuesError, match="at '/internalToken/publicKeys': minLength"):
        render_chart()
    shutil.copytree(CHART_DIR, tmp_path / "trellis")
    (tmp_path / "trellis/values.schema.json").unlink()
    with pytest.raises(HelmRenderError, match=r"internalToken\.publicKeys is required: the JWKS"):
        Chart.load(tmp_path / "trellis").render({}, name=RELEASE, namespace=NAMESPACE)


# --- 2. the schema ---------------------------------------------------------------------------


def _schema_at(schema: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """The schema node describing a values path (following $ref, allOf, additionalProperties)."""
    node = schema
    for key in [None, *path]:
        while True:
            if "$ref" in node:
                node = SCHEMA["definitions"][node["$ref"].split("/")[-1]]
            elif "allOf" in node and len(node["allOf"]) == 1 and "properties" not in node:
                node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
                node.pop("allOf", None)
            else:
                break
        if key is None:
            continue
        if key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("type") == "array":
            node = node["items"]
        else:
            raise AssertionError(f"{'.'.join(path)}: not described by values.schema.json")
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].split("/")[-1]]
    return node


def _leaves(value: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, [*path, str(key)])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, [*path, str(index)])


@pytest.mark.parametrize("value_set", [*CI_SETS, "defaults"])
def test_schema_types_every_value(value_set: str) -> None:
    values = (
        yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        if value_set == "defaults"
        else load_values(value_set)
    )
    for path, _ in _leaves(values, []):
        node = _schema_at(SCHEMA, path)
        assert {"type", "enum", "oneOf", "allOf"} & set(node), f"{'.'.join(path)}: untyped"


def test_schema_closes_every_object() -> None:
    """Every object the schema describes lists its keys (or types its map values)."""

    def walk(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                yield where
            for key, child in node.items():
                yield from walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                yield from walk(child, f"{where}/{index}")

    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False
    assert list(walk(SCHEMA, "#")) == []


SCHEMA_REJECTS = [
    pytest.param(
        {"services": {"contacts": {"replicas": "two"}}},
        "at '/services/contacts/replicas': got string, want integer",
        id="wrong-type-in-service",
    ),
    pytest.param(
        {"services": {"contacts": {"replicas": -1}}},
        "at '/services/contacts/replicas': minimum: got -1, want 0",
        id="negative-replicas",
    ),
    pytest.param(
        {"serviceDefaults": {"hpa": {"maxReplicas": -3}}},
        "at '/serviceDefaults/hpa/maxReplicas': minimum: got -3, want 1",
        id="negative-hpa-max",
    ),
    pytest.param(
        {"replicaCount": 3},
        "at '': additional properties 'replicaCount' not allowed",
        id="unknown-top-level-key",
    ),
    pytest.param(
        {"services": {"contacts": {"replica": 3}}},
        "at '/services/contacts': additional properties 'replica' not allowed",
        id="unknown-key-in-service",
    ),
    pytest.param(
        {"services": {"gateway": {"database": {"pool": {"max": "ten"}}}}},
        "at '/services/gateway/database/pool/max': got string, want integer",
        id="wrong-type-nested",
    ),
    pytest.param(
        {"networkPolicy": {"enabled": "yes"}},
        "at '/networkPolicy/enabled': got string, want boolean",
        id="wrong-type-bool",
    ),
    pytest.param(
        {"services": {"contacts": {"probes": {"kind": "tcp"}}}},
        "at '/services/contacts/probes/kind': value must be one of 'grpc', 'http'",
        id="bad-probe-kind",
    ),
    pytest.param(
        {"services": {"contacts": {"ports": {"grpc": 70000}}}},
        "at '/services/contacts/ports/grpc': maximum: got 70,000, want 65,535",
        id="port-out-of-range",
    ),
    pytest.param(
        {"services": {"contacts": {"env": {"LOG_LEVEL": 10}}}},
        "at '/services/contacts/env/LOG_LEVEL': got number, want string",
        id="env-value-not-string",
    ),
    pytest.param(
        {"services": {"contacts": {"image": {"digest": "latest"}}}},
        "at '/services/contacts/image/digest'",
        id="bad-digest",
    ),
    pytest.param(
        {"internalToken": {"publicKeys": ""}},
        "at '/internalToken/publicKeys': minLength: got 0, want 1",
        id="no-trusted-keys",
    ),
    pytest.param(
        {"internalToken": {"publicKeys": {"keys": []}}},
        "at '/internalToken/publicKeys': got object, want string",
        id="trusted-keys-as-yaml",
    ),
    pytest.param(
        {"services": {"Sales": {"image": {"repository": "sales"}}}},
        "'Sales' does not match pattern '^[a-z][a-z0-9]{0,19}$'",
        id="bad-service-name",
    ),
    pytest.param(
        {"services": {"billing": {"image": {"repository": "billing"}}}},
        "at '/services/billing': missing properties 'ports', 'probes'",
        id="incomplete-service",
    ),
]


@pytest.mark.parametrize(("values", "message"), SCHEMA_REJECTS)
def test_schema_rejects(values: dict[str, Any], message: str) -> None:
    values = merge(TRUSTED, values)
    with pytest.raises(HelmValuesError) as caught:
        render_chart(values)
    assert message in str(caught.value)
    report = lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert any(message in error for error in report["errors"]), report["errors"]


TEMPLATE_REJECTS = [
    pytest.param(
        {"services": {"contacts": {"callers": ["gateway", "billing"]}}},
        'services.contacts.callers: "billing" is not a service',
        id="unknown-caller",
    ),
    pytest.param(
        {"services": {"contacts": {"probes": {"port": "http"}}}},
        'services.contacts: port "http" is not in its ports (grpc, metrics)',
        id="probe-port-not-declared",
    ),
    pytest.param(
        {"secrets": {"bootstrapAdminKey": {"create": True, "value": "short"}}},
        "secrets.bootstrapAdminKey.value: 32 or more characters are needed",
        id="short-created-secret",
    ),
    pytest.param(
        {"services": {"contacts": {"database": {"create": True}}}},
        "services.contacts.database.url is required with create: true",
        id="created-db-secret-without-url",
    ),
    pytest.param(
        {"services": {"contacts": {"hpa": {"minReplicas": 5, "maxReplicas": 2}}}},
        "services.contacts.hpa: maxReplicas is below minReplicas",
        id="hpa-bounds",
    ),
    pytest.param(
        {"services": {"gateway": {"secretEnv": {"GATEWAY_X": "nothere"}}}},
        "secretEnv GATEWAY_X refers to secrets.nothere, which is not defined",
        id="unknown-secret-entry",
    ),
    pytest.param(
        {"internalToken": {"publicKeys": json.dumps(json.loads(TRUSTED_JWKS)["keys"][0])}},
        'internalToken.publicKeys: not a JWKS: put the JWKs in {"keys": [...]}',
        id="a-jwk-for-the-jwks",
    ),
    pytest.param(
        {"internalToken": {"publicKeys": "-----BEGIN PUBLIC KEY-----"}},
        "internalToken.publicKeys: not a JWKS",
        id="trusted-keys-not-json",
    ),
    pytest.param(
        {"internalToken": {"publicKeys": '{"keys": []}'}},
        "internalToken.publicKeys: not a JWKS",
        id="no-key-in-the-jwks",
    ),
    pytest.param(
        {"internalToken": {"publicKeys": '{"keys": [{"kty": "OKP", "crv": "Ed25519"}]}'}},
        "internalToken.publicKeys: every key of the JWKS needs a kid",
        id="key-without-kid",
    ),
    pytest.param(
        {"services": {"gateway": {"env": {"INTERNAL_TOKEN_KEY_ID": "gateway-2"}}}},
        'services.gateway.env.INTERNAL_TOKEN_KEY_ID: "gateway-2" is not a kid of '
        "internalToken.publicKeys (gateway-1): every token it signs would be refused",
        id="signing-key-not-trusted",
    ),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_REJECTS)
def test_template_rejects(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmRenderError) as caught:
        render_chart(merge(TRUSTED, values))
    assert message in str(caught.value)


# --- 3. schemas of the manifests -------------------------------------------------------------

CNPG_API = "postgresql.cnpg.io/v1"


def _validate_cnpg_cluster(doc: Manifest) -> None:
    """No model of CloudNativePG's CRD is published (nor may its CRD be copied here): the fields
    the chart relies on, and no other."""
    assert doc["apiVersion"] == CNPG_API
    assert doc["kind"] == "Cluster"
    spec = doc["spec"]
    assert isinstance(spec["instances"], int)
    assert spec["instances"] >= 1
    assert re.fullmatch(r"\d+(Mi|Gi|Ti)", spec["storage"]["size"])
    initdb = spec["bootstrap"]["initdb"]
    assert initdb["database"]
    assert initdb["owner"]
    for role in spec["managed"]["roles"]:
        assert role["ensure"] == "present"
        assert role["login"] is True
        assert role["passwordSecret"]["name"]
    assert set(spec) <= {"instances", "imageName", "storage", "bootstrap", "managed"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("value_set", CI_SETS)
def test_manifests_validate(renders: dict[str, Render], value_set: str, version: str) -> None:
    for doc in renders[value_set].docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            validate_custom_resource(doc)
        elif doc["apiVersion"] == CNPG_API:
            _validate_cnpg_cluster(doc)
        else:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{where} (Kubernetes {version}): {path}: {error.message}")


def test_monitoring_resources_are_validated(renders: dict[str, Render]) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in renders[PROD].docs}
    assert set(CUSTOM_RESOURCES) <= kinds, "production renders every custom resource checked"


MONITOR_MISTAKES = [
    pytest.param(
        lambda m: m["spec"].update(endpoint=m["spec"].pop("endpoints")),
        r"spec\.endpoints\n  Field required.*spec\.endpoint\n  Extra inputs are not permitted",
        id="endpoint-for-endpoints",
    ),
    pytest.param(
        lambda m: m["spec"]["endpoints"][0].update(intervall="5s"),
        r"spec\.endpoints\.0\.intervall\n  Extra inputs are not permitted",
        id="unknown-key-in-endpoint",
    ),
    pytest.param(
        lambda m: m["spec"]["endpoints"][0].update(interval="30 seconds"),
        r"spec\.endpoints\.0\.interval\n  String should match pattern",
        id="duration-pattern",
    ),
    pytest.param(
        lambda m: m["spec"]["endpoints"][0]["relabelings"][0].update(action="copy"),
        r"spec\.endpoints\.0\.relabelings\.0\.action\n  Input should be",
        id="relabel-action-enum",
    ),
]


@pytest.mark.parametrize(("mistake", "message"), MONITOR_MISTAKES)
def test_monitoring_validation_catches_mistakes(
    renders: dict[str, Render], mistake: Callable[[Manifest], None], message: str
) -> None:
    monitor = copy.deepcopy(renders[PROD].get("ServiceMonitor", RELEASE))
    validate_custom_resource(monitor)
    mistake(monitor)
    with pytest.raises(pydantic.ValidationError, match=re.compile(message, re.DOTALL)):
        validate_custom_resource(monitor)


def test_monitoring_validation_catches_converted_values(renders: dict[str, Render]) -> None:
    # Pydantic's lax mode takes the string "true" for a boolean; the API server does not.
    monitor = copy.deepcopy(renders[PROD].get("ServiceMonitor", RELEASE))
    monitor["spec"]["endpoints"][0]["honorLabels"] = "true"
    with pytest.raises(AssertionError, match="values the CRD converts"):
        validate_custom_resource(monitor)


def test_cnpg_cluster_is_rendered_only_when_asked(renders: dict[str, Render]) -> None:
    assert "cnpg" in renders, "ci/cnpg.yaml renders the CloudNativePG option"
    for value_set, r in renders.items():
        clusters = {d["metadata"]["name"] for d in r.of_kind("Cluster")}
        wanted = {
            f"{fullname(n)}-pg"
            for n, s in services(r).items()
            if s["database"]["enabled"] and s["database"]["cnpg"]["enabled"]
        }
        assert clusters == wanted, value_set
    r = renders["cnpg"]
    for name in services(r):
        cluster = r.get("Cluster", f"{fullname(name)}-pg")
        assert cluster["spec"]["bootstrap"]["initdb"]["database"] == name
        job = r.get("Job", f"{fullname(name)}-migrate")
        env = container_env(r, job["spec"]["template"]["spec"]["containers"][0])
        prefix = env_prefix(name)
        assert f"@{fullname(name)}-pg-rw:5432/{name}" in env[f"{prefix}_DATABASE_URL"]
        assert env[f"{prefix}_MIGRATION_DATABASE_URL"] == {
            "secretKeyRef": {"name": f"{fullname(name)}-pg-app", "key": "uri"}
        }
        # The cluster is a regular resource: it exists only after install, so migrate after.
        assert hook_events(job) == {"post-install", "pre-upgrade"}


# --- 4. checkov ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def checkov_report(
    renders: dict[str, Render], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """checkov --framework kubernetes over the production-like render, once per session."""
    out = tmp_path_factory.mktemp("rendered-production")
    for index, doc in enumerate(renders[PROD].docs):
        name = f"{index:03d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        (out / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    checkov = Path(sys.executable).with_name("checkov")
    proc = subprocess.run(
        [
            str(checkov),
            "--framework",
            "kubernetes",
            "-d",
            str(out),
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
    )
    assert proc.stdout.strip(), f"checkov printed nothing: {proc.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_checkov_finds_nothing(checkov_report: dict[str, Any]) -> None:
    results = checkov_report["results"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed_checks"]
    ]
    assert failed == []
    assert results["parsing_errors"] == []
    checked = {c["resource"].split(".")[0] for c in results["passed_checks"]}
    assert {"Deployment", "Job", "Pod", "Service", "ConfigMap"} <= checked


def test_checkov_skips_are_annotations_with_reasons(
    renders: dict[str, Render], checkov_report: dict[str, Any]
) -> None:
    annotated: set[tuple[str, str, str]] = set()
    for doc in renders[PROD].docs:
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/"):
                assert SKIP_ANNOTATION.match(key), key
                check, reason = value.split("=", 1)
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), value
                assert "=" not in reason, f"{check}: checkov splits on '='"
                assert len(reason) >= 40, f"{check}: give the reason"
                annotated.add((doc["kind"], doc["metadata"]["name"], check))
    skipped = {
        (c["resource"].split(".")[0], c["resource"].split(".")[-1], c["check_id"])
        for c in checkov_report["results"]["skipped_checks"]
    }
    assert skipped == annotated
    # The reasons: secrets reach the services as env (they read nothing else); the helm test
    # Pod runs once and exits, so probes do not apply.
    assert {check for _, _, check in skipped} == {"CKV_K8S_35", "CKV_K8S_8", "CKV_K8S_9"}


# --- 5. wiring -------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", CI_SETS)
def test_addresses_name_services_and_their_ports(
    renders: dict[str, Render], value_set: str
) -> None:
    r = renders[value_set]
    svcs = services(r)
    seen: set[tuple[str, str]] = set()
    for owner, spec, _ in r.pod_specs():
        for container in containers(spec):
            for key, value in container_env(r, container).items():
                if not key.endswith("_ADDR"):
                    continue
                host, _, port = str(value).rpartition(":")
                service = r.get("Service", host.split(".")[0])
                ports = {p["port"]: p for p in service["spec"]["ports"]}
                assert int(port) in ports, f"{owner['metadata']['name']}: {key}={value}"
                # ... and that Service reaches a container port of the pods it selects.
                target = ports[int(port)]["targetPort"]
                backends = [
                    d
                    for d in r.of_kind("Deployment")
                    if selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(d))
                ]
                assert len(backends) == 1, f"{key}: Service {host} selects {len(backends)}"
                declared = backends[0]["spec"]["template"]["spec"]["containers"][0]["ports"]
                assert target in {p["name"] for p in declared} | {
                    p["containerPort"] for p in declared
                }
                seen.add((owner["metadata"]["name"], key))
    wanted = {
        (fullname(caller), f"{env_prefix(caller)}_{env_prefix(callee)}_ADDR")
        for callee, svc in svcs.items()
        for caller in svc["callers"]
    }
    assert seen == wanted
    assert (fullname("gateway"), "GATEWAY_CONTACTS_ADDR") in seen


@pytest.mark.parametrize("value_set", CI_SETS)
def test_probes_target_declared_ports(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    svcs = services(r)
    for doc in r.of_kind("Deployment"):
        name = doc["metadata"]["labels"][COMPONENT]
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
        kind = svcs[name]["probes"]["kind"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            spec = container[probe]
            if kind == "grpc":
                # native gRPC health probes (grpc.health.v1); the port must be a number
                assert spec["grpc"]["port"] in by_name.values(), f"{name} {probe}"
            else:
                port = spec["httpGet"]["port"]
                assert port in by_name or port in by_name.values(), f"{name} {probe}"
        if kind == "http":
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert svcs["contacts"]["probes"]["kind"] == "grpc"
    assert svcs["gateway"]["probes"]["kind"] == "http"


@pytest.mark.parametrize("value_set", CI_SETS)
def test_selectors_budgets_autoscalers_and_scraping_line_up(
    renders: dict[str, Render], value_set: str
) -> None:
    r = renders[value_set]
    svcs = services(r)
    pods = [labels for _, _, labels in r.pod_specs()]
    monitors = r.of_kind("ServiceMonitor")
    for doc in r.of_kind("Deployment"):
        name = doc["metadata"]["labels"][COMPONENT]
        svc = svcs[name]
        labels = pod_labels(doc)
        selector = doc["spec"]["selector"]
        assert selector_matches(selector, labels)
        # the selector picks this Deployment's pods and no other pod of the chart
        assert sum(selector_matches(selector, p) for p in pods) == 1, name

        budgets = [
            p
            for p in r.of_kind("PodDisruptionBudget")
            if selector_matches(p["spec"]["selector"], labels)
        ]
        assert len(budgets) == (1 if svc["pdb"]["enabled"] else 0), name

        scalers = [
            h
            for h in r.of_kind("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]
            == {"apiVersion": "apps/v1", "kind": "Deployment", "name": doc["metadata"]["name"]}
        ]
        if svc["hpa"]["enabled"]:
            assert len(scalers) == 1, name
            assert "replicas" not in doc["spec"], f"{name}: the HPA owns the replica count"
        else:
            assert scalers == []
            assert doc["spec"]["replicas"] == svc["replicas"]

        fronts = [
            s
            for s in r.of_kind("Service")
            if selector_matches({"matchLabels": s["spec"]["selector"]}, labels)
        ]
        assert len(fronts) == 1, name
        (front,) = fronts
        if r.values["serviceMonitor"]["enabled"]:
            (monitor,) = monitors
            assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
            assert selector_matches(monitor["spec"]["selector"], front["metadata"]["labels"])
            port_names = {p["name"] for p in front["spec"]["ports"]}
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
        else:
            assert monitors == []
    # every HPA and PDB belongs to a Deployment (none dangling)
    deployments = {d["metadata"]["name"] for d in r.of_kind("Deployment")}
    assert {
        h["spec"]["scaleTargetRef"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")
    } <= deployments
    for budget in r.of_kind("PodDisruptionBudget"):
        assert any(
            selector_matches(budget["spec"]["selector"], pod_labels(d))
            for d in r.of_kind("Deployment")
        )


def test_service_monitor_labels_series_by_service(renders: dict[str, Render]) -> None:
    (monitor,) = renders[PROD].of_kind("ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == COMPONENT
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
        "targetLabel": "service",
    } in endpoint["relabelings"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- 5b. NetworkPolicies: exactly the declared edges ------------------------------------------

Edge = tuple[str, str, int]
ANY = "<any>"


class Policies:
    """Evaluates the rendered NetworkPolicies over the chart's pods (by component)."""

    def __init__(self, r: Render) -> None:
        self.r = r
        self.np = r.values["networkPolicy"]
        self.policies = r.of_kind("NetworkPolicy")
        self.pods: dict[str, tuple[dict[str, str], dict[str, int]]] = {}
        for _, spec, labels in r.pod_specs():
            ports = {
                p["name"]: p["containerPort"] for c in containers(spec) for p in c.get("ports", [])
            }
            self.pods[labels[COMPONENT]] = (labels, ports)

    def _selecting(self, pod: str, direction: str) -> list[Manifest]:
        labels = self.pods[pod][0]
        return [
            p
            for p in self.policies
            if direction in p["spec"]["policyTypes"]
            and selector_matches(p["spec"]["podSelector"], labels)
        ]

    def _pods_matching(self, selector: dict[str, Any]) -> list[str]:
        return [
            name for name, (labels, _) in self.pods.items() if selector_matches(selector, labels)
        ]

    @staticmethod
    def _port(port: Any, ports: dict[str, int]) -> int:
        if isinstance(port, str):
            assert port in ports, f"named port {port} is not declared by the pod"
            return ports[port]
        return int(port)

    def ingress(self) -> set[Edge]:
        edges: set[Edge] = set()
        for pod, (_, ports) in self.pods.items():
            selecting = self._selecting(pod, "Ingress")
            if not selecting:
                edges.add((ANY, pod, 0))
            for policy in selecting:
                for rule in policy["spec"].get("ingress", []):
                    numbers = [self._port(p.get("port", 0), ports) for p in rule.get("ports", [{}])]
                    for peer in rule.get("from", [{}]):
                        for source in self._ingress_source(peer):
                            edges |= {(source, pod, n) for n in numbers}
        return edges

    def _ingress_source(self, peer: dict[str, Any]) -> list[str]:
        if set(peer) == {"podSelector"}:
            return self._pods_matching(peer["podSelector"]) or [f"<pods {peer}>"]
        for name in ("ingressController", "monitoring"):
            wanted = {k: v for k, v in self.np[name].items() if v}
            if peer == wanted:
                return ["ingress" if name == "ingressController" else "monitoring"]
        return [f"<peer {peer}>"]

    def egress(self) -> set[Edge]:
        targets = self.np["egress"]
        edges: set[Edge] = set()
        for pod in self.pods:
            selecting = self._selecting(pod, "Egress")
            if not selecting:
                edges.add((pod, ANY, 0))
            for policy in selecting:
                for rule in policy["spec"].get("egress", []):
                    peers = rule.get("to", [])
                    for port_spec in rule.get("ports", [{}]):
                        port = port_spec.get("port", 0)
                        internal = [
                            p
                            for p in peers
                            if set(p) == {"podSelector"} and self._pods_matching(p["podSelector"])
                        ]
                        for peer in internal:
                            for dest in self._pods_matching(peer["podSelector"]):
                                edges.add((pod, dest, self._port(port, self.pods[dest][1])))
                        external = [p for p in peers if p not in internal]
                        if external or not peers:
                            edges.add((pod, self._external(external, port, targets), int(port)))
        return edges

    def _external(self, peers: list[dict[str, Any]], port: Any, targets: dict[str, Any]) -> str:
        for name, target in targets.items():
            if port == target["port"] and peers == target["to"]:
                return name
        if port == 5432 and len(peers) == 1:
            cluster = peers[0].get("podSelector", {}).get("matchLabels", {}).get("cnpg.io/cluster")
            if cluster:
                return "postgresql"
        return f"<unknown {peers}:{port}>"


def expected_edges(r: Render) -> tuple[set[Edge], set[Edge], set[Edge]]:
    """(internal, from outside, to outside) edges as declared in values."""
    svcs = services(r)
    tests = r.values["tests"]
    egress = r.values["networkPolicy"]["egress"]
    internal: set[Edge] = set()
    inbound: set[Edge] = set()
    outbound: set[Edge] = set()
    for name, svc in svcs.items():
        ports = svc["ports"]
        internal |= {(caller, name, ports["grpc"]) for caller in svc["callers"]}
        if svc["expose"]["enabled"]:
            inbound |= {("ingress", name, ports[p]) for p in svc["expose"]["ports"]}
        inbound.add(("monitoring", name, ports["metrics"]))
        outbound |= {(name, "dns", egress["dns"]["port"]), (name, "nats", egress["nats"]["port"])}
        if r.values["otel"]["endpoint"]:
            outbound.add((name, "otlp", egress["otlp"]["port"]))
        if svc["database"]["enabled"]:
            outbound.add((name, "postgresql", egress["postgresql"]["port"]))
            if r.values["migrations"]["enabled"]:
                outbound |= {
                    (f"{name}-migrate", "dns", egress["dns"]["port"]),
                    (f"{name}-migrate", "postgresql", egress["postgresql"]["port"]),
                }
    if tests["enabled"]:
        target = svcs[tests["service"]]["ports"][tests["port"]]
        internal.add(("test", tests["service"], target))
        outbound.add(("test", "dns", egress["dns"]["port"]))
    return internal, inbound, outbound


def check_edges(r: Render) -> None:
    policies = Policies(r)
    ingress, egress = policies.ingress(), policies.egress()
    internal, inbound, outbound = expected_edges(r)
    chart_pods = set(policies.pods)
    assert {e for e in ingress if e[0] in chart_pods} == internal, "ingress between pods"
    assert {e for e in egress if e[1] in chart_pods} == internal, "egress between pods"
    assert {e for e in ingress if e[0] not in chart_pods} == inbound, "ingress from outside"
    assert {e for e in egress if e[1] not in chart_pods} == outbound, "egress to outside"


@pytest.mark.parametrize("value_set", CI_SETS)
def test_network_policies_allow_exactly_the_declared_edges(
    renders: dict[str, Render], value_set: str
) -> None:
    r = renders[value_set]
    if not r.values["networkPolicy"]["enabled"]:
        assert r.of_kind("NetworkPolicy") == []
        return
    check_edges(r)


def test_production_edges_are_the_contract(renders: dict[str, Render]) -> None:
    internal, inbound, _ = expected_edges(renders[PROD])
    assert internal == {
        ("gateway", "contacts", 50051),
        ("gateway", "sales", 50051),
        ("sales", "contacts", 50051),
        ("gateway", "support", 50051),
        ("support", "contacts", 50051),
        ("test", "gateway", 8080),
    }
    assert inbound == {
        ("ingress", "gateway", 8080),
        ("ingress", "gateway", 50050),
        ("monitoring", "contacts", 9090),
        ("monitoring", "support", 9090),
        ("monitoring", "gateway", 9090),
        ("monitoring", "sales", 9090),
    }
    check_edges(renders[PROD])


def test_an_undeclared_edge_is_caught(renders: dict[str, Render]) -> None:
    r = renders[PROD]
    policy = r.get("NetworkPolicy", fullname("contacts"))
    extra = {"from": [{"podSelector": {"matchLabels": {COMPONENT: "test"}}}]}
    tampered = merge(policy, {"spec": {"ingress": [*policy["spec"]["ingress"], extra]}})
    docs = [tampered if d is policy else d for d in r.docs]
    with pytest.raises(AssertionError, match="ingress between pods"):
        check_edges(Render(values=r.values, docs=docs, notes=r.notes))


# A throwaway service, declared as any new one is: its values entry (the gateway calls it, it
# has its own database) and its name added to the callers of the service it calls (contacts).
ECHO = {
    "services": {
        "echo": {
            "image": {"digest": "sha256:" + "e" * 64},  # the repository is its name
            "ports": {"grpc": 50051, "metrics": 9090},
            "probes": {"kind": "grpc", "port": "grpc"},
            "callers": ["gateway"],
            "database": {"appRole": "echo_app"},
        },
        "contacts": {"callers": [*declaration.load().services["contacts"].callers, "echo"]},
    }
}


def test_adding_a_service_is_a_values_entry_and_its_edges(renders: dict[str, Render]) -> None:
    base = renders[PROD]
    r = render_chart(merge(load_values(PROD), ECHO))
    echo = fullname("echo")
    for kind, name in [
        ("Deployment", echo),
        ("Service", echo),
        ("ServiceAccount", echo),
        ("ConfigMap", echo),
        ("NetworkPolicy", echo),
        ("PodDisruptionBudget", echo),
        ("HorizontalPodAutoscaler", echo),
        ("Job", f"{echo}-migrate"),
        ("ServiceAccount", f"{echo}-migrate"),
        ("ConfigMap", f"{echo}-migrate"),
        ("NetworkPolicy", f"{echo}-migrate"),
    ]:
        assert r.has(kind, name), f"{kind}/{name}"
    (container,) = deployment_of(r, "echo")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"registry.example.com/trellis/echo:0.1.0@sha256:{'e' * 64}"
    assert container["args"] == ["serve"]
    env = container_env(r, container)
    assert env["ECHO_GRPC_PORT"] == "50051"
    assert env["ECHO_DATABASE_URL"] == {"secretKeyRef": {"name": f"{echo}-db", "key": "url"}}
    (job,) = [j for j in r.of_kind("Job") if j["metadata"]["name"] == f"{echo}-migrate"]
    migrate = job["spec"]["template"]["spec"]["containers"][0]
    assert migrate["image"] == container["image"]
    assert migrate["args"] == ["migrate"]
    assert container_env(r, migrate)["ECHO_APP_DB_ROLE"] == "echo_app"

    # Its edges: gateway -> echo and echo -> contacts, each with its address; nothing more.
    internal, _, _ = expected_edges(r)
    assert {("gateway", "echo", 50051), ("echo", "contacts", 50051)} <= internal
    check_edges(r)
    assert r.get("ConfigMap", fullname("gateway"))["data"]["GATEWAY_ECHO_ADDR"] == f"{echo}:50051"
    assert r.get("ConfigMap", echo)["data"]["ECHO_CONTACTS_ADDR"] == f"{fullname('contacts')}:50051"

    # Everything else stays as it was, but what those edges touch: the gateway's address list
    # (its ConfigMap, and the checksum that rolls its pods), the policies of both ends of each
    # edge, and the scrape selector.
    before = {(d["kind"], d["metadata"]["name"]): d for d in base.docs}
    after = {(d["kind"], d["metadata"]["name"]): d for d in r.docs}
    added = set(after) - set(before)
    assert all(name.startswith(echo) for _, name in added), added
    assert set(before) <= set(after)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        ("ConfigMap", fullname("gateway")),
        ("Deployment", fullname("gateway")),
        ("NetworkPolicy", fullname("gateway")),
        ("NetworkPolicy", fullname("contacts")),
        ("ServiceMonitor", RELEASE),
    }
    gateway_config = after[("ConfigMap", fullname("gateway"))]["data"]
    assert {k: v for k, v in gateway_config.items() if k != "GATEWAY_ECHO_ADDR"} == before[
        ("ConfigMap", fullname("gateway"))
    ]["data"]
    rolled = copy.deepcopy(after[("Deployment", fullname("gateway"))])
    rolled["spec"]["template"]["metadata"]["annotations"]["checksum/config"] = before[
        ("Deployment", fullname("gateway"))
    ]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert rolled == before[("Deployment", fullname("gateway"))], "only the config checksum"

    # ... and the new manifests are valid and wired like the others.
    for version in K8S_VERSIONS:
        for key in added:
            kubernetes_validate.validate(after[key], version, strict=True)
    validate_custom_resource(after[("ServiceMonitor", RELEASE)])
    with_echo = {"echo": r}
    test_addresses_name_services_and_their_ports(with_echo, "echo")
    test_probes_target_declared_ports(with_echo, "echo")
    test_selectors_budgets_autoscalers_and_scraping_line_up(with_echo, "echo")
    test_hook_resources_come_first(with_echo, "echo")
    test_every_pod_is_hardened(with_echo, "echo")
    test_deployments(with_echo, "echo")


# --- 5c. pods: hardening, config, secrets -----------------------------------------------------


@pytest.mark.parametrize("value_set", CI_SETS)
def test_every_pod_is_hardened(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    for owner, spec, _ in r.pod_specs():
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, where
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, where
        assert pod_ctx["runAsUser"] > 0, where
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(spec):
            ctx = c["securityContext"]
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            tmp = mounts["/tmp"]  # noqa: S108 - the container's mount path, not a file here
            assert "emptyDir" in volumes[tmp], f"{where}: /tmp is an emptyDir"
            assert c["imagePullPolicy"] == r.values["image"]["pullPolicy"]


@pytest.mark.parametrize("value_set", CI_SETS)
def test_deployments(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    svcs = services(r)
    assert {d["metadata"]["labels"][COMPONENT] for d in r.of_kind("Deployment")} == set(svcs)
    for name, svc in svcs.items():
        doc = deployment_of(r, name)
        spec = doc["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = container_env(r, container)
        prefix = env_prefix(name)
        # the image's entrypoint runs the service; the chart only picks its command
        assert "command" not in container
        assert container["args"] == ["serve"]
        grace = int(env[f"{prefix}_SHUTDOWN_GRACE_SECONDS"])
        assert spec["terminationGracePeriodSeconds"] > grace
        assert spec["serviceAccountName"] == fullname(name)
        assert r.get("ServiceAccount", fullname(name))["automountServiceAccountToken"] is False
        spread = spec["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"topology.kubernetes.io/zone"}
        assert all(selector_matches(c["labelSelector"], pod_labels(doc)) for c in spread)
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        # image: <registry>/<repository, default the name>:<tag, default appVersion>[@digest]
        wanted = svc.get("image", {})
        tag = wanted.get("tag") or r.values["image"]["tag"] or APP_VERSION
        image = f"{r.values['image']['registry']}/{wanted.get('repository') or name}:{tag}"
        if wanted.get("digest"):
            image += f"@{wanted['digest']}"
        assert container["image"] == image
        # the ports the service listens on are those it declares
        for port, number in svc["ports"].items():
            assert env[f"{prefix}_{port.upper()}_PORT"] == str(number)


def test_images_default_to_the_app_version(renders: dict[str, Render]) -> None:
    image = deployment_of(renders["minimal"], "contacts")["spec"]["template"]["spec"]["containers"][
        0
    ]["image"]
    assert image == f"ghcr.io/trellis-crm/contacts:{APP_VERSION}"
    prod = deployment_of(renders[PROD], "contacts")["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(
        r"registry\.example\.com/trellis/contacts:[\w.]+@sha256:[0-9a-f]{64}", prod["image"]
    )


def test_a_config_change_rolls_only_that_service(renders: dict[str, Render]) -> None:
    before = renders["minimal"]
    after = render_chart(
        merge(
            load_values("minimal"),
            {"services": {"gateway": {"env": {"GATEWAY_MAX_BODY_BYTES": "2048"}}}},
        )
    )

    def checksum(r: Render, name: str) -> str:
        value: str = deployment_of(r, name)["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return value

    assert checksum(before, "gateway") != checksum(after, "gateway")
    assert checksum(before, "contacts") == checksum(after, "contacts")


SECRET_ENV = re.compile(r"(DATABASE_URL|PRIVATE_KEY|BOOTSTRAP_ADMIN_KEY|PASSWORD)$")


@pytest.mark.parametrize("value_set", CI_SETS)
def test_secrets_never_in_config_maps(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    secret_values = [s["value"] for s in r.values["secrets"].values() if s["value"]]
    for svc in services(r).values():
        secret_values += [v for v in (svc["database"]["url"], svc["database"]["migrationUrl"]) if v]
    for config in r.of_kind("ConfigMap"):
        if config["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            continue
        for key, value in config["data"].items():
            assert not SECRET_ENV.search(key), f"{config['metadata']['name']}: {key}"
            assert not any(s in value for s in secret_values), (
                f"{config['metadata']['name']}: {key}"
            )
    for _, spec, _ in r.pod_specs():
        for c in containers(spec):
            for item in c.get("env", []):
                if SECRET_ENV.search(item["name"]) and "value" in item:
                    # only a URL assembled from a secret variable, never a literal secret
                    assert "$(" in item["value"], item["name"]


def test_secrets_are_created_only_when_values_say_so(renders: dict[str, Render]) -> None:
    assert renders["external-secrets"].of_kind("Secret") == []
    assert renders[PROD].of_kind("Secret") == []
    minimal = renders["minimal"]
    created = {s["metadata"]["name"] for s in minimal.of_kind("Secret") if not is_hook(s)}
    assert created == {
        fullname("internal-token-signing-key"),
        fullname("bootstrap-admin-key"),
        *(fullname(f"{name}-db") for name in declaration.load().services),
    }
    # a created database Secret holds the app URL only; the owner URL goes to the migration
    assert set(minimal.get("Secret", fullname("contacts-db"))["data"]) == {"url"}
    ext = renders["external-secrets"]
    gateway = container_env(
        ext, deployment_of(ext, "gateway")["spec"]["template"]["spec"]["containers"][0]
    )
    assert gateway["INTERNAL_TOKEN_PRIVATE_KEY"] == {
        "secretKeyRef": {"name": "trellis-platform", "key": "internal-token-signing-key"}
    }
    assert gateway["GATEWAY_BOOTSTRAP_ADMIN_KEY"] == {
        "secretKeyRef": {"name": "trellis-platform", "key": "bootstrap-admin-key"}
    }
    assert gateway["GATEWAY_DATABASE_URL"] == {
        "secretKeyRef": {"name": "gateway-postgres", "key": "app-url"}
    }
    assert "GATEWAY_MIGRATION_DATABASE_URL" not in gateway, (
        "the owner URL is for the migration only"
    )


def test_ingress_reaches_the_gateway(renders: dict[str, Render]) -> None:
    r = renders[PROD]
    (ingress,) = r.of_kind("Ingress")
    service = r.get("Service", fullname("gateway"))
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["hosts"] == ["api.crm.example.com"]
    assert renders["minimal"].of_kind("Ingress") == []


def test_monitoring_embeds_the_rules_and_the_dashboard(renders: dict[str, Render]) -> None:
    r = renders[PROD]
    (rule,) = r.of_kind("PrometheusRule")
    rules = yaml.safe_load((CHART_DIR / "files/prometheus-rules.yaml").read_text())
    assert rule["spec"] == rules
    (dashboard,) = [
        c for c in r.of_kind("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    (text,) = dashboard["data"].values()
    assert json.loads(text) == json.loads((CHART_DIR / "files/dashboard.json").read_text())
    assert renders["minimal"].of_kind("PrometheusRule") == []
    assert renders["minimal"].of_kind("ServiceMonitor") == []


# --- 6. hooks --------------------------------------------------------------------------------


def _weight(doc: Manifest) -> int:
    return int(doc["metadata"]["annotations"].get(HOOK_WEIGHT, "0"))


@pytest.mark.parametrize("value_set", CI_SETS)
def test_hook_resources_come_first(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    svcs = services(r)
    jobs = r.of_kind("Job")
    with_db = {n for n, s in svcs.items() if s["database"]["enabled"]}
    assert {j["metadata"]["name"] for j in jobs} == {f"{fullname(n)}-migrate" for n in with_db}
    # Secrets a Job may use without the chart rendering them: the operator's (existingSecret,
    # or the default name when the chart does not create it) and CloudNativePG's.
    existing = {
        s["existingSecret"] or fullname(kebab(key))
        for key, s in r.values["secrets"].items()
        if not s["create"]
    }
    for name in with_db:
        db = svcs[name]["database"]
        if not db["create"]:
            existing.add(db["existingSecret"] or f"{fullname(name)}-db")
        if db["cnpg"]["enabled"]:
            existing |= {f"{fullname(name)}-pg-app", db["cnpg"]["appRoleSecret"]}

    for job in jobs:
        where = job["metadata"]["name"]
        name = job["spec"]["template"]["metadata"]["labels"][COMPONENT].removesuffix("-migrate")
        events = {"pre-install", "pre-upgrade"}
        if svcs[name]["database"]["cnpg"]["enabled"]:
            events = {"post-install", "pre-upgrade"}
        assert hook_events(job) == events, where
        assert "before-hook-creation" in job["metadata"]["annotations"][HOOK_DELETE]
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert "command" not in container
        assert container["args"] == ["migrate"]
        env = container_env(r, container)
        prefix = env_prefix(name)
        assert env[f"{prefix}_APP_DB_ROLE"] == (svcs[name]["database"]["appRole"] or f"{name}_app")
        assert f"{prefix}_MIGRATION_DATABASE_URL" in env

        needs: list[tuple[str, str]] = [("ServiceAccount", spec["serviceAccountName"])]
        needs += [("ConfigMap", s["configMapRef"]["name"]) for s in container.get("envFrom", [])]
        needs += [
            ("Secret", e["valueFrom"]["secretKeyRef"]["name"])
            for e in container.get("env", [])
            if "valueFrom" in e
        ]
        labels = job["spec"]["template"]["metadata"]["labels"]
        needs += [
            ("NetworkPolicy", p["metadata"]["name"])
            for p in r.of_kind("NetworkPolicy")
            if p["spec"]["podSelector"].get("matchLabels", {}).get(COMPONENT) == labels[COMPONENT]
        ]
        if r.values["networkPolicy"]["enabled"]:
            assert any(kind == "NetworkPolicy" for kind, _ in needs), f"{where}: no egress policy"
        for kind, needed in needs:
            if kind == "Secret" and not r.has(kind, needed):
                assert needed in existing, (
                    f"{where}: Secret {needed} is neither rendered nor an existing one"
                )
                continue
            dep = r.get(kind, needed)
            # Created as a hook of the same events, before the Job, replaced on each run.
            assert hook_events(dep) == events, f"{where}: {kind}/{needed} is not a hook"
            assert _weight(dep) < _weight(job), f"{where}: {kind}/{needed} is not weighted before"
            assert dep["metadata"]["annotations"][HOOK_DELETE] == "before-hook-creation"


def test_hook_annotations_of_the_migration(renders: dict[str, Render]) -> None:
    r = renders["minimal"]
    job = r.get("Job", fullname("contacts-migrate"))
    assert job["metadata"]["annotations"][HOOK] == "pre-install,pre-upgrade"
    assert job["metadata"]["annotations"][HOOK_DELETE] == "before-hook-creation,hook-succeeded"
    for kind in ("ServiceAccount", "ConfigMap", "Secret"):
        dep = r.get(kind, fullname("contacts-migrate"))
        assert dep["metadata"]["annotations"][HOOK] == "pre-install,pre-upgrade"
        assert dep["metadata"]["annotations"][HOOK_DELETE] == "before-hook-creation"
        assert _weight(dep) < _weight(job)
    secret = r.get("Secret", fullname("contacts-migrate"))
    assert set(secret["data"]) == {"CONTACTS_DATABASE_URL", "CONTACTS_MIGRATION_DATABASE_URL"}
    owner = load_values("minimal")["services"]["contacts"]["database"]["migrationUrl"]
    assert base64.b64decode(secret["data"]["CONTACTS_MIGRATION_DATABASE_URL"]).decode() == owner


@pytest.mark.parametrize("value_set", CI_SETS)
def test_helm_test_checks_the_gateway(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    (pod,) = r.of_kind("Pod")
    assert hook_events(pod) == {"test"}
    (container,) = pod["spec"]["containers"]
    gateway = deployment_of(r, "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == gateway["image"], "the gateway image: python, no shell"
    assert container["command"][:2] == ["python", "-c"]
    urls = re.findall(r'"(http://[^"]+)"', container["command"][2])
    assert urls
    assert set(urls) == {f"http://{fullname('gateway')}:8080/readyz"}
    service = r.get("Service", fullname("gateway"))
    assert 8080 in {p["port"] for p in service["spec"]["ports"]}
    assert pod["spec"]["restartPolicy"] == "Never"


# --- 7. identity-token keys ------------------------------------------------------------------

PUBLIC_KEYS = "INTERNAL_TOKEN_PUBLIC_KEYS"
PRIVATE_KEY = "INTERNAL_TOKEN_PRIVATE_KEY"
KEY_ID = "INTERNAL_TOKEN_KEY_ID"
PEM_MARKER = "PRIVATE KEY-----"


def processes(r: Render) -> Iterator[tuple[str, Manifest]]:
    """(owner name, container) of every service Deployment and migration Job."""
    for owner, spec, _ in r.pod_specs():
        if owner["kind"] in ("Deployment", "Job"):
            for c in containers(spec):
                yield owner["metadata"]["name"], c


def signing_key_ref(r: Render) -> dict[str, Any]:
    entry = r.values["secrets"]["internalTokenSigningKey"]
    name = entry["existingSecret"] if entry["existingSecret"] and not entry["create"] else None
    return {
        "secretKeyRef": {
            "name": name or fullname(kebab("internalTokenSigningKey")),
            "key": entry["key"],
        }
    }


@pytest.mark.parametrize("value_set", CI_SETS)
def test_every_process_trusts_the_configured_keys(
    renders: dict[str, Render], value_set: str
) -> None:
    r = renders[value_set]
    wanted = r.values["internalToken"]["publicKeys"]
    checked = set()
    for owner, c in processes(r):
        # plain config: from the ConfigMap, never an env entry (those are for Secrets)
        assert PUBLIC_KEYS not in {e["name"] for e in c.get("env", [])}, owner
        found = [
            r.get("ConfigMap", source["configMapRef"]["name"])["data"].get(PUBLIC_KEYS)
            for source in c["envFrom"]
        ]
        assert [v for v in found if v is not None] == [wanted], owner
        checked.add(owner)
    svcs = services(r)
    assert checked == {fullname(n) for n in svcs} | {
        f"{fullname(n)}-migrate" for n, svc in svcs.items() if svc["database"]["enabled"]
    }


@pytest.mark.parametrize("value_set", CI_SETS)
def test_the_ci_keys_are_what_the_services_accept(value_set: str) -> None:
    """The settings' own check (crmkit.auth.load_jwks) takes each value set's JWKS, and it
    trusts the key the gateway signs with."""
    values = merge(yaml.safe_load((CHART_DIR / "values.yaml").read_text()), load_values(value_set))
    trusted = auth.load_jwks(values["internalToken"]["publicKeys"])
    kid = values["services"]["gateway"]["env"][KEY_ID]
    assert kid in trusted
    signing = values["secrets"]["internalTokenSigningKey"]
    if signing["create"]:  # the chart-created private key is the other half of that JWK
        key = auth.SigningKey.from_pem(kid, signing["value"])
        assert auth.load_jwks(auth.jwks(key.public_jwk()))[kid] == trusted[kid]


@pytest.mark.parametrize("value_set", CI_SETS)
def test_only_the_gateway_signs(renders: dict[str, Render], value_set: str) -> None:
    r = renders[value_set]
    signers = {}
    for owner, c in processes(r):
        env = container_env(r, c)
        if PRIVATE_KEY in env:
            signers[owner] = env[PRIVATE_KEY]
    # the gateway's Deployment, from the Secret of secrets.internalTokenSigningKey; not its
    # migration Job, which signs nothing
    assert signers == {fullname("gateway"): signing_key_ref(r)}
    assert r.get("ConfigMap", fullname("gateway"))["data"][KEY_ID] == "gateway-1"
    ref = signing_key_ref(r)["secretKeyRef"]
    if r.has("Secret", ref["name"]):
        created = base64.b64decode(r.get("Secret", ref["name"])["data"][ref["key"]]).decode()
        assert created == r.values["secrets"]["internalTokenSigningKey"]["value"]


def clear_private_keys(r: Render) -> list[str]:
    """The rendered objects (and NOTES.txt) that show a PEM private key in clear: its header,
    or a line of the body of one of the values' private keys. Only a Secret's `data` may hold
    one (base64, given to the process that signs)."""
    bodies = {
        line
        for s in r.values["secrets"].values()
        if PEM_MARKER in s["value"]
        for line in s["value"].splitlines()
        if line and not line.startswith("-----")
    }
    found = []
    for doc in r.docs:
        shown = {k: v for k, v in doc.items() if not (doc["kind"] == "Secret" and k == "data")}
        text = json.dumps(shown)
        if any(needle in text for needle in {PEM_MARKER, *bodies}):
            found.append(f"{doc['kind']}/{doc['metadata']['name']}")
    if any(needle in r.notes for needle in {PEM_MARKER, *bodies}):
        found.append("NOTES.txt")
    return found


@pytest.mark.parametrize("value_set", CI_SETS)
def test_no_private_key_in_clear(renders: dict[str, Render], value_set: str) -> None:
    assert clear_private_keys(renders[value_set]) == []


def test_a_private_key_in_clear_is_caught(renders: dict[str, Render]) -> None:
    r = renders["minimal"]
    pem = r.values["secrets"]["internalTokenSigningKey"]["value"]
    config = r.get("ConfigMap", fullname("gateway"))
    body = pem.splitlines()[1]  # without its PEM header
    for leaked in (pem, body):
        tampered = merge(config, {"data": {PRIVATE_KEY: leaked}})
        docs = [tampered if d is config else d for d in r.docs]
        found = clear_private_keys(Render(values=r.values, docs=docs, notes=r.notes))
        assert found == [f"ConfigMap/{fullname('gateway')}"]


def _checksums(r: Render) -> dict[str, tuple[str, str]]:
    return {
        d["metadata"]["labels"][COMPONENT]: (
            d["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
            d["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"],
        )
        for d in r.of_kind("Deployment")
    }


def test_a_key_rotation_renders_and_rolls_what_it_changes(renders: dict[str, Render]) -> None:
    """docs/operations.md's rotation, on the chart-created key of ci/minimal.yaml: trust the new
    key everywhere, switch the gateway to it, stop trusting the old one."""
    base = load_values("minimal")
    old_jwk = json.loads(TRUSTED_JWKS)["keys"][0]
    new = auth.SigningKey.generate("gateway-2")
    both = auth.jwks(old_jwk, new.public_jwk())
    steps: list[dict[str, Any]] = [
        {"internalToken": {"publicKeys": both}},
        {
            "internalToken": {"publicKeys": both},
            "secrets": {"internalTokenSigningKey": {"value": new.pem()}},
            "services": {"gateway": {"env": {KEY_ID: "gateway-2"}}},
        },
        {
            "internalToken": {"publicKeys": auth.jwks(new.public_jwk())},
            "secrets": {"internalTokenSigningKey": {"value": new.pem()}},
            "services": {"gateway": {"env": {KEY_ID: "gateway-2"}}},
        },
    ]
    before = renders["minimal"]
    rolled = []
    for step in steps:
        after = render_chart(merge(base, step))
        for owner, c in processes(after):
            assert container_env(after, c)[PUBLIC_KEYS] == step["internalToken"]["publicKeys"], (
                owner
            )
        old, now = _checksums(before), _checksums(after)
        rolled.append({name for name in now if now[name] != old[name]})
        before = after
    # the JWKS rolls every service; the gateway's key and key id roll the gateway alone
    every = set(declaration.load().services)
    assert rolled == [every, {"gateway"}, every]
    assert "the services trust\nthe keys gateway-2 (internalToken.publicKeys)" in before.notes
    assert "signed by the gateway with key gateway-2" in before.notes
