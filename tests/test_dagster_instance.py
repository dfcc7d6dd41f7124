"""The shipped dagster.yaml example really puts the instance on PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import psycopg
from dagster import DagsterInstance, materialize

from smc_assets.bars import bars
from smc_assets.partitions import SYMBOLS, bar_partition_key
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.db import create_database, with_database
from smc_core.synthetic import Instrument, SyntheticConfig, write_synthetic

EXAMPLE = Path(__file__).resolve().parent.parent / "dagster.yaml.example"


def test_example_config_stores_runs_in_its_own_postgres_database(admin_url, database, tmp_path, monkeypatch):
    name = "smc_t_dagster_" + tmp_path.name[-8:].replace("-", "_").lower()
    create_database(admin_url, name)
    dagster_url = with_database(admin_url, name)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(EXAMPLE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", _as_url(dagster_url))
    try:
        instance = DagsterInstance.from_config(str(home))
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        landing = tmp_path / "landing"
        write_synthetic(SyntheticConfig(days=1, start=date(2024, 3, 5),
                                        instrument=Instrument(symbol="GC")), landing)
        instance.add_dynamic_partitions(SYMBOLS.name, ["GC"])
        result = materialize([bars], partition_key=bar_partition_key("GC", date(2024, 3, 5)),
                             instance=instance, resources={"database": DatabaseResource(url=database.url),
                                                           "landing": LandingResource(path=str(landing))})
        assert result.success
        with psycopg.connect(dagster_url) as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        instance.dispose()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_url(conninfo: str) -> str:
    """The example's URL form (with the psycopg2 driver) for a fixture's key=value string."""
    if "://" in conninfo:
        return conninfo.replace("postgresql://", "postgresql+psycopg2://", 1)
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = parts.get("user", "postgres")
    password = f":{parts['password']}" if parts.get("password") else ""
    host = parts.get("host", "localhost")
    port = parts.get("port", "5432")
    if host.startswith("/"):  # a Unix socket (the embedded server)
        return f"postgresql+psycopg2://{user}{password}@/{parts['dbname']}?host={host}&port={port}"
    return f"postgresql+psycopg2://{user}{password}@{host}:{port}/{parts['dbname']}"
