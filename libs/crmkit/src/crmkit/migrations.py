"""Versioned SQL migrations, applied by `<service> migrate` under an advisory lock.

Run as its own command (a Job or an init step), never at serve start, so replicas never race.
The chassis's own files (outbox, inbox) come first, then the service's, each file in its own
transaction, recorded in schema_migrations. Afterwards the service's app role is granted
data access (but not ownership, so row-level security binds it).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from crmkit.db import Conn

log = logging.getLogger(__name__)

_LOCK_KEY = 7_271_955_001  # any constant shared by all migrators of a database


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: str  # "<namespace>/<file name>", e.g. "contacts/0001_init.sql"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir(package_file: str) -> Path:
    """Where a service's SQL files are, given the `__file__` of a module of its package.

    An installed wheel (the container image) carries them as package data beside the modules,
    `trellis_<name>/migrations`; a source checkout (an editable install) keeps them in
    `services/<name>/migrations`, two levels above the package in `src/`.
    """
    package = Path(package_file).resolve().parent
    for candidate in (package / "migrations", package.parents[1] / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no migrations beside {package} nor in {package.parents[1]}")


def discover(service: str, service_dir: Path) -> list[Migration]:
    chassis = resources.files("crmkit") / "migrations"
    found = [
        Migration(f"crmkit/{f.name}", f.read_text())
        for f in sorted(chassis.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".sql")
    ]
    found += [
        Migration(f"{service}/{f.name}", f.read_text()) for f in sorted(service_dir.glob("*.sql"))
    ]
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
# Databases migrated before checksums were kept adopt the files' current sums once.
_ADD_CHECKSUM = "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text"


def _check_unchanged(migrations: list[Migration], applied: dict[str, str | None]) -> None:
    """Refuse to go on when a file that was applied has changed since: the database was built
    from the old text, so the new one would never run and the two would silently differ."""
    edited = [
        m.version
        for m in migrations
        if applied.get(m.version) is not None and applied[m.version] != m.checksum
    ]
    if edited:
        raise MigrationError(
            f"applied migrations were edited since: {', '.join(edited)}. "
            "Never change an applied file; add a new migration with the change instead."
        )


async def migrate(url: str, migrations: list[Migration], app_role: str | None) -> list[str]:
    """Apply what is pending; return the versions applied."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            await conn.execute(_CREATE_TABLE)
            await conn.execute(_ADD_CHECKSUM)
            cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
            done: dict[str, str | None] = {r[0]: r[1] for r in await cur.fetchall()}
            _check_unchanged(migrations, done)
            for m in migrations:
                if m.version in done:
                    if done[m.version] is None:
                        await conn.execute(
                            "UPDATE schema_migrations SET checksum = %s WHERE version = %s",
                            (m.checksum, m.version),
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (m.version, m.checksum),
                    )
                log.info("migration applied", extra={"version": m.version})
                applied.append(m.version)
            if app_role:
                await _grant(conn, app_role)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


async def _grant(conn: psycopg.AsyncConnection[tuple[object, ...]], role: str) -> None:
    r = sql.Identifier(role)
    await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(r))
    await conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(
            r
        )
    )
    await conn.execute(
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(r)
    )
    await conn.execute(
        sql.SQL("REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM {}").format(r)
    )


async def pending(conn: Conn, migrations: list[Migration]) -> list[str]:
    """Versions not yet applied; the service reports NOT_SERVING until this is empty."""
    try:
        cur = await conn.execute("SELECT version FROM schema_migrations")
    except psycopg.errors.UndefinedTable:
        return [m.version for m in migrations]
    done = {row["version"] for row in await cur.fetchall()}
    return [m.version for m in migrations if m.version not in done]
