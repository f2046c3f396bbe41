"""The platform's services, declared once: the `services` map of the Helm chart's values.

Each entry names a service, its ports and its `callers` (the call graph). The chart renders
its Deployments, Services and NetworkPolicy edges from it; this module reads the same file so
that devstack (`make run`, the tests, the benchmarks) starts the same services with the same
wiring: `<SERVICE>_<PORT>_PORT` per declared port and `<CALLER>_<CALLEE>_ADDR` per edge, as
the chart sets them. What each service serves comes from its protos (crmkit.contract).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART_VALUES = Path(__file__).resolve().parents[4] / "deploy" / "helm" / "trellis" / "values.yaml"
GATEWAY = "gateway"


@dataclass(frozen=True)
class ServiceDecl:
    name: str
    ports: dict[str, int]  # name -> container port; `grpc` is what callers use
    callers: tuple[str, ...]
    database: bool
    # Environment variables taken from the chart's `secrets` entries: {ENV_NAME: entry name}.
    secret_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the entry's plain `env`
    # The entry's `developmentEnv`: what devstack adds on one machine (never in the chart).
    development_env: dict[str, str] = field(default_factory=dict)
    # The entry's `tokenScopes`: what the service's own identity-token key may claim.
    token_scopes: tuple[str, ...] | None = None

    @property
    def prefix(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class Declaration:
    services: dict[str, ServiceDecl]

    def callees(self, name: str) -> list[str]:
        """The services `name` calls, in declaration order."""
        return [s.name for s in self.services.values() if name in s.callers]

    def start_order(self) -> list[str]:
        """Callees before their callers, so a caller finds what it calls already listening."""
        ordered: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in ordered:
                return
            if name in path:
                raise ValueError(f"the call graph has a cycle: {' -> '.join((*path, name))}")
            for callee in self.callees(name):
                visit(callee, (*path, name))
            ordered.append(name)

        for name in self.services:
            visit(name, ())
        return ordered

    def backends(self) -> list[str]:
        """The services the gateway publishes (those that list it as a caller)."""
        return self.callees(GATEWAY)

    def with_service(self, decl: ServiceDecl) -> Declaration:
        return Declaration({**self.services, decl.name: decl})


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(path: Path = CHART_VALUES) -> Declaration:
    values = yaml.safe_load(path.read_text())
    defaults = values.get("serviceDefaults", {})
    services = {}
    for name, entry in values["services"].items():
        merged = _merge(defaults, entry)
        services[name] = ServiceDecl(
            name=name,
            ports={k: int(v) for k, v in merged["ports"].items()},
            callers=tuple(merged.get("callers", [])),
            database=bool(merged.get("database", {}).get("enabled", True)),
            secret_env=dict(merged.get("secretEnv", {})),
            env={k: str(v) for k, v in merged.get("env", {}).items()},
            development_env={k: str(v) for k, v in merged.get("developmentEnv", {}).items()},
            token_scopes=tuple(merged["tokenScopes"]) if "tokenScopes" in merged else None,
        )
    declaration = Declaration(services)
    declaration.start_order()  # refuses a cyclic call graph early
    for decl in services.values():
        unknown = set(decl.callers) - set(services)
        if unknown:
            raise ValueError(f"{decl.name}: unknown callers {sorted(unknown)}")
    return declaration
