"""`python -m <service> serve|migrate`: the one entry point shape of every service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from crmkit import contract, migrations
from crmkit.config import ServiceSettings, load_settings
from crmkit.logging import configure_logging
from crmkit.service import ServiceDefinition, serve


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (not on Windows): its event loop, and so every
    socket wait of gRPC, psycopg and NATS, costs about half the CPU of asyncio's own."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(defn: ServiceDefinition, settings_class: type[ServiceSettings]) -> None:
    parser = argparse.ArgumentParser(prog=f"trellis_{defn.name}")
    parser.add_argument("command", choices=["serve", "migrate"])
    args = parser.parse_args()
    settings = load_settings(settings_class)
    if args.command == "serve":
        try:
            _run(serve(defn, settings))
        except contract.ContractError as exc:
            print(f"refusing to start {defn.name}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    configure_logging(defn.name, settings.log_level)
    url = settings.migration_database_url or settings.database_url
    try:
        asyncio.run(migrations.migrate(url, defn.migrations(), settings.app_db_role))
    except migrations.MigrationError as exc:
        print(f"migration refused: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
