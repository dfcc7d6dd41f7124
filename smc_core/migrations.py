"""Ordered SQL migrations: ``sql/NNN_name.sql``, each applied once, in its own transaction.

Applied versions are recorded with a checksum; editing a migration after it was applied
is refused rather than silently ignored. An advisory lock lets several processes (CLI,
Dagster runs, the service) call ``migrate`` at the same time safely.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from smc_core.db import Database
from smc_core.errors import SmcError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "sql"
_FILE_PATTERN = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x534D43  # "SMC"

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS smc_schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


class MigrationError(SmcError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    checksum_matches: bool | None


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``directory``, ordered by version; malformed names are an error."""
    if not directory.is_dir():
        raise MigrationError(f"migrations folder {directory} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files must be named NNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version:03d} is also used by {found[version].path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def migrate(db: Database, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply pending migrations in order; return those applied now."""
    migrations = discover(directory)
    applied_now: list[Migration] = []
    with db.connection() as conn:
        conn.autocommit = True
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_BOOTSTRAP)
            applied = _applied(conn)
            _check_unchanged(migrations, applied)
            for migration in migrations:
                if migration.version in applied:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)
                        conn.execute(
                            "INSERT INTO smc_schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except Exception as exc:
                    raise MigrationError(
                        f"{migration.path.name} failed and was rolled back: {str(exc).strip()}"
                    ) from exc
                applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
            conn.autocommit = False
    return applied_now


def status(db: Database, directory: Path = MIGRATIONS_DIR) -> list[MigrationStatus]:
    """Every known migration with when it was applied and whether its file still matches."""
    migrations = discover(directory)
    with db.connection() as conn:
        exists = conn.execute("SELECT to_regclass('smc_schema_migrations') IS NOT NULL").fetchone()[0]
        applied = _applied(conn) if exists else {}
    return [
        MigrationStatus(
            m.version, m.name,
            applied[m.version][1] if m.version in applied else None,
            (applied[m.version][0] == m.checksum) if m.version in applied else None,
        )
        for m in migrations
    ]


def storage_mode(db: Database) -> str:
    """``timescaledb`` or ``native``, as chosen by the first migration."""
    with db.connection() as conn:
        return conn.execute("SELECT smc_storage_mode()").fetchone()[0]


def _applied(conn) -> dict[int, tuple[str, datetime]]:
    rows = conn.execute("SELECT version, checksum, applied_at FROM smc_schema_migrations").fetchall()
    return {version: (checksum, applied_at) for version, checksum, applied_at in rows}


def _check_unchanged(migrations: list[Migration], applied: dict[int, tuple[str, datetime]]) -> None:
    for migration in migrations:
        if migration.version in applied and applied[migration.version][0] != migration.checksum:
            raise MigrationError(
                f"{migration.path.name} was changed after it was applied; add a new migration instead"
            )
