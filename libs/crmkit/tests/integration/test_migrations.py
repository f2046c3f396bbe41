"""Migrations: applied once even when replicas race, recorded, and the app role kept a non-owner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg.rows import dict_row

from crmkit import migrations


def _files(tmp_path: Path) -> list[migrations.Migration]:
    (tmp_path / "0001_things.sql").write_text(
        "CREATE TABLE things (id int PRIMARY KEY);"
        "INSERT INTO things VALUES (1);"  # a second run would fail on the duplicate key
    )
    (tmp_path / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    return migrations.discover("svc", tmp_path)


async def test_racing_migrators_apply_each_file_once(
    fresh_db: tuple[str, str], tmp_path: Path
) -> None:
    owner_url, app_url = fresh_db
    role = f"{urlparse(owner_url).path.lstrip('/')}_app"
    wanted = _files(tmp_path)
    results = await asyncio.gather(*(migrations.migrate(owner_url, wanted, role) for _ in range(4)))
    applied = [v for run in results for v in run]
    assert sorted(applied) == sorted(m.version for m in wanted)  # each exactly once overall
    assert "crmkit/0001_outbox_inbox.sql" in applied

    async with await psycopg.AsyncConnection.connect(app_url, row_factory=dict_row) as conn:
        assert await migrations.pending(conn, wanted) == []
        row = await (await conn.execute("SELECT count(*) AS n FROM things")).fetchone()
        assert row == {"n": 1}
        # The app role uses the tables but does not own them, and cannot record migrations.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("ALTER TABLE things ADD COLUMN sneaky int")
    async with await psycopg.AsyncConnection.connect(app_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ('svc/9999.sql')")


async def test_a_failing_file_leaves_nothing_half_applied(
    fresh_db: tuple[str, str], tmp_path: Path
) -> None:
    owner_url, _ = fresh_db
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
    wanted = migrations.discover("svc", tmp_path)
    with pytest.raises(psycopg.errors.DivisionByZero):
        await migrations.migrate(owner_url, wanted, None)
    async with await psycopg.AsyncConnection.connect(owner_url, row_factory=dict_row) as conn:
        assert await migrations.pending(conn, wanted) == ["svc/0002_broken.sql"]
        half = await (await conn.execute("SELECT to_regclass('half') AS t")).fetchone()
        assert half == {"t": None}


async def test_an_edited_applied_file_is_refused_by_name(
    fresh_db: tuple[str, str], tmp_path: Path
) -> None:
    owner_url, _ = fresh_db
    await migrations.migrate(owner_url, _files(tmp_path), None)
    (tmp_path / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN renamed text;")
    (tmp_path / "0003_new.sql").write_text("CREATE TABLE later (id int);")
    with pytest.raises(migrations.MigrationError, match=r"svc/0002_more\.sql.*add a new migration"):
        await migrations.migrate(owner_url, migrations.discover("svc", tmp_path), None)
    async with await psycopg.AsyncConnection.connect(owner_url, row_factory=dict_row) as conn:
        later = await (await conn.execute("SELECT to_regclass('later') AS t")).fetchone()
        assert later == {"t": None}  # refused before anything else ran


async def test_a_database_migrated_before_checksums_adopts_them_once(
    fresh_db: tuple[str, str], tmp_path: Path
) -> None:
    owner_url, _ = fresh_db
    wanted = _files(tmp_path)
    await migrations.migrate(owner_url, wanted, None)
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as conn:
        await conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
    assert await migrations.migrate(owner_url, wanted, None) == []
    async with await psycopg.AsyncConnection.connect(owner_url, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM schema_migrations WHERE checksum IS NULL"
        )
        assert await cur.fetchone() == {"n": 0}
