"""`python -m trellis_devstack run`: the whole platform on this machine (what `make run` does)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from honcho.manager import Manager

from crmkit import contract
from trellis_devstack import declaration, reference
from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.stack import Stack, fixed_ports, new_secrets

DATA = Path(os.environ.get("TRELLIS_DATA_DIR", ".data")).resolve()
# The outside world on this machine: the capture mailbox (the SMTP relay of the services'
# developmentEnv) and a webhook receiver (trellis_devstack.capture).
CAPTURE_SMTP_PORT, CAPTURE_HTTP_PORT = 1025, 8025


def demo_scopes(decl: declaration.Declaration) -> list[str]:
    """Every scope a tenant's key can hold on the services the gateway publishes."""
    published = [s for name in decl.backends() for s in contract.services_of_domain(name)]
    return sorted(contract.grantable_scopes(published))


def _secrets() -> dict[str, str]:
    """Generated once and kept under .data/, so a second run finds the same keys; a secret
    the chart declares later is added to the file then."""
    path = DATA / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    values = {**new_secrets(), **stored}
    if values != stored:
        DATA.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
        path.chmod(0o600)
    return values


def _announce(stack: Stack, manager: Manager) -> None:
    try:
        stack.wait_ready()
        demo = DATA / "demo.json"
        if demo.exists():
            tenant_id, key = json.loads(demo.read_text())
        else:
            tenant_id, key = stack.create_tenant("Demo Tenant", demo_scopes(stack.decl))
            demo.write_text(json.dumps([tenant_id, key]))
            demo.chmod(0o600)
    except Exception as exc:  # a failed start must stop everything, not hang
        print(f"\nstart-up failed: {exc}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        return
    url = stack.gateway_url
    print(
        f"\n  Trellis is running.\n"
        f"  Gateway (REST):  {url}\n"
        f"  Gateway (gRPC):  {stack.grpc_address(declaration.GATEWAY)}\n"
        f"  API docs:        {url}/docs   (OpenAPI: {url}/v1/openapi.json)\n"
        f"  Demo tenant:     {tenant_id}\n"
        f"  API key:         {key}\n"
        f"  Mail sent:       {DATA / 'capture' / 'mail'}   (SMTP 127.0.0.1:{CAPTURE_SMTP_PORT})\n"
        f"  Webhook sink:    http://127.0.0.1:{CAPTURE_HTTP_PORT}/   (requests kept in"
        f" {DATA / 'capture' / 'webhooks'})\n\n"
        f"  Try: curl -H 'Authorization: Bearer {key}' {url}/v1/contacts\n"
        f"  Ctrl-C stops everything; data stays in {DATA}\n",
        flush=True,
    )


def run() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    values = _secrets()
    postgres = Postgres(DATA / "pg")
    nats: Nats | None = None
    nats_url = os.environ.get("NATS_URL")
    if not nats_url:
        nats = Nats(DATA / "nats", port=4222)
        nats.start()
        nats_url = nats.url
    try:
        decl = declaration.load()
        stack = Stack(
            postgres=postgres, nats_url=nats_url, ports=fixed_ports(decl), secrets=values, decl=decl
        )
        stack.provision()
        stack.migrate()
        manager = Manager()
        capture = [
            sys.executable,
            "-m",
            "trellis_devstack.capture",
            f"--smtp-port={CAPTURE_SMTP_PORT}",
            f"--http-port={CAPTURE_HTTP_PORT}",
            f"--folder={DATA / 'capture'}",
        ]
        manager.add_process("capture", "exec " + " ".join(capture))
        for name in stack.services:
            # exec: the service itself, not a shell around it, gets the signals.
            command = "exec " + " ".join(stack.command(name, "serve"))
            manager.add_process(name, command, env=stack.env(name))
        threading.Thread(target=_announce, args=(stack, manager), daemon=True).start()
        manager.loop()
    finally:
        if nats is not None:
            nats.stop()
        postgres.stop()
    sys.exit(manager.returncode or 0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="trellis_devstack")
    parser.add_argument("command", choices=["run", "docs"])
    args, rest = parser.parse_known_args()
    if args.command == "docs":
        reference.main(rest)
    else:
        run()


main()
