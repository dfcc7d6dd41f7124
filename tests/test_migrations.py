"""The migration runner: ordered, once each, atomic, and refusing edited history."""

from __future__ import annotations

import shutil

import pytest

from smc_core.migrations import MIGRATIONS_DIR, MigrationError, discover, migrate, status


def test_applies_in_order_once_and_is_idempotent(empty_database):
    applied = migrate(empty_database)
    assert [m.version for m in applied] == sorted(m.version for m in discover())
    assert migrate(empty_database) == []
    rows = status(empty_database)
    assert all(r.applied_at is not None and r.checksum_matches for r in rows)
    times = [r.applied_at for r in rows]
    assert times == sorted(times)


def test_failed_migration_rolls_back_and_is_not_recorded(empty_database, tmp_path):
    folder = tmp_path / "sql"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "900_half_done.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT no_such_function();\n")
    with pytest.raises(MigrationError, match="900_half_done.sql failed and was rolled back"):
        migrate(empty_database, folder)
    with empty_database.connection() as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM smc_schema_migrations WHERE version = 900").fetchone()[0] == 0


def test_edited_migration_is_refused(empty_database, tmp_path):
    folder = tmp_path / "sql"
    shutil.copytree(MIGRATIONS_DIR, folder)
    migrate(empty_database, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=f"{first.name} was changed after it was applied"):
        migrate(empty_database, folder)


@pytest.mark.parametrize("names, message", [
    (["001_a.sql", "001_b.sql"], "version 001 is also used by"),
    (["1_bad.sql"], "must be named NNN_lowercase_name.sql"),
])
def test_malformed_folders_are_refused(tmp_path, names, message):
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message):
        discover(tmp_path)
