"""`python -m trellis_devstack run`: the whole platform on this machine (what `make run` does)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from honcho.manager import Manager

from trellis_devstack.infra import Nats, Postgres
from trellis_devstack.stack import SERVICES, Ports, Stack

DATA = Path(os.environ.get("TRELLIS_DATA_DIR", ".data")).resolve()
DEMO_SCOPES = ["contacts:read", "contacts:write", "admin"]


def _secrets() -> dict[str, str]:
    """Generated once and kept under .data/, so a second run finds the same keys."""
    path = DATA / "secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    values = {
        "internal_token_secret": secrets.token_urlsafe(48),
        "bootstrap_key": secrets.token_urlsafe(48),
    }
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
            tenant_id, key = stack.create_tenant("Demo Tenant", DEMO_SCOPES)
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
        f"  Gateway (gRPC):  127.0.0.1:{stack.ports.gateway_grpc}\n"
        f"  API docs:        {url}/docs   (OpenAPI: {url}/v1/openapi.json)\n"
        f"  Demo tenant:     {tenant_id}\n"
        f"  API key:         {key}\n\n"
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
        stack = Stack(
            postgres=postgres,
            nats_url=nats_url,
            ports=Ports.fixed(),
            internal_token_secret=values["internal_token_secret"],
            bootstrap_key=values["bootstrap_key"],
        )
        stack.provision()
        stack.migrate()
        manager = Manager()
        for name in SERVICES:
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
    parser.add_argument("command", choices=["run"])
    parser.parse_args()
    run()


main()
