"""The reference tables of the docs, derived from the declaration and the protos.

Each service README holds, between markers, its RPCs (route, scope, how a repeat behaves) and
its events (type, subject); the gateway README holds the grantable scopes. `make docs`
rewrites them; a test fails when one is stale, so the docs cannot drift from the contract.

    <!-- reference:rpcs -->  ...  <!-- /reference:rpcs -->
    <!-- reference:events --> ... <!-- /reference:events -->
    <!-- reference:scopes --> ... <!-- /reference:scopes -->
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import sys
from collections.abc import Callable
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from crmkit import contract
from trellis_devstack import declaration
from trellis_devstack.declaration import GATEWAY, Declaration

ROOT = declaration.CHART_VALUES.parents[3]


def _method_comments() -> dict[str, str]:
    """The first sentence of each RPC's comment, by full method name."""
    raw = (importlib.resources.files("crm") / "descriptors.binpb").read_bytes()
    found: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for i, service in enumerate(file.service):
            for j, method in enumerate(service.method):
                text = " ".join(comments.get((6, i, 2, j), "").split())
                found[f"{file.package}.{service.name}.{method.name}"] = text.split(". ")[0].rstrip(
                    "."
                )
    return found


def _route(method: MethodDescriptor) -> str:
    for field, rule in method.GetOptions().ListFields():
        if field.full_name == "google.api.http":
            kind = rule.WhichOneof("pattern")
            return f"`{kind.upper()} {getattr(rule, kind)}`"
    return "gRPC only"


def _repeat(method: MethodDescriptor) -> str:
    if contract.takes_idempotency_key(method):
        return "Idempotency-Key"
    return "safe to retry"


def rpc_table(services: list[ServiceDescriptor]) -> str:
    comments = _method_comments()
    rows = ["| RPC | route | scope | a repeat | what it does |", "|---|---|---|---|---|"]
    for service in services:
        for m in service.methods:
            rows.append(
                f"| `{m.name}` | {_route(m)} | `{contract.required_scope(m)}` | {_repeat(m)} "
                f"| {comments.get(m.full_name, '')} |"
            )
    return "\n".join(rows)


def event_table(domain: str) -> str:
    rows = ["| ce-type | subject | message |", "|---|---|---|"]
    for message in contract.event_messages(domain):
        kind = contract.event_type(message)
        subject = f"crm.events.<tenant>.{kind.domain}.{kind.entity}.{kind.action}"
        rows.append(f"| `{kind.ce_type}` | `{subject}` | `{message.name}` |")
    return "\n".join(rows)


def scope_list(decl: Declaration) -> str:
    published = [s for name in decl.backends() for s in contract.services_of_domain(name)]
    return ", ".join(f"`{s}`" for s in sorted(contract.grantable_scopes(published)))


def _blocks(decl: Declaration) -> dict[Path, dict[str, Callable[[], str]]]:
    out: dict[Path, dict[str, Callable[[], str]]] = {
        ROOT / "services" / GATEWAY / "README.md": {"scopes": lambda: scope_list(decl)}
    }
    for name in decl.backends():
        services = contract.services_of_domain(name)
        out[ROOT / "services" / name / "README.md"] = {
            "rpcs": lambda services=services: rpc_table(services),  # type: ignore[misc]
            "events": lambda name=name: event_table(name),  # type: ignore[misc]
        }
    return out


def _escaped(replacement: str) -> str:
    return replacement.replace("\\", "\\\\")


def render(text: str, blocks: dict[str, Callable[[], str]]) -> str:
    for marker, content in blocks.items():
        pattern = re.compile(
            rf"(<!-- reference:{marker} -->\n)(?:.*?\n)?(<!-- /reference:{marker} -->)", re.S
        )
        if not pattern.search(text):
            raise ValueError(
                f"missing <!-- reference:{marker} --> ... <!-- /reference:{marker} -->"
            )
        text = pattern.sub(rf"\g<1>{_escaped(content())}\n\g<2>", text)
    return text


def stale(decl: Declaration | None = None, write: bool = False) -> list[Path]:
    """The docs whose reference blocks differ from the contract (rewritten when `write`)."""
    found = []
    for path, blocks in _blocks(decl or declaration.load()).items():
        text = path.read_text()
        fresh = render(text, blocks)
        if fresh != text:
            found.append(path)
            if write:
                path.write_text(fresh)
    return found


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trellis_devstack docs")
    parser.add_argument("--check", action="store_true", help="fail if a doc is stale")
    args = parser.parse_args(argv)
    changed = stale(write=not args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'rewrote'}: {path.relative_to(ROOT)}")
    if args.check and changed:
        sys.exit(1)
