"""`smc backfill` as a user runs it: many days in one Dagster run store exactly what a run per day
stores, Dagster records every partition of the range, and a day that fails inside a range is
named on its own while the other days of the range are kept (exit code 1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import date

import pytest
from dagster import AssetKey, DagsterInstance

SMC = [sys.executable, "-m", "smc_jobs.cli"]
DAYS = [date(2024, 3, 4), date(2024, 3, 5), date(2024, 3, 6), date(2024, 3, 7)]


@pytest.fixture(scope="module")
def home(database, tmp_path_factory):
    """One synthetic week of ES bars, ingested under ES, MES and MNQ (same CME calendar)."""
    home = tmp_path_factory.mktemp("home")
    data = tmp_path_factory.mktemp("data")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SMC_", "DAGSTER_"))}
    env.update(DATABASE_URL=database.url, SMC_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    made = smc(env, "synth", "--days", str(len(DAYS)), "--out", str(data), "--symbol", "ES", "--start", "2024-03-04")
    assert made.returncode == 0, made.stderr
    files = sorted(str(p) for p in (data / "ES").glob("*.txt"))
    for symbol in ("ES", "MES", "MNQ"):
        loaded = smc(env, "ingest", *files, "--symbol", symbol, "-q")
        assert loaded.returncode == 0, loaded.stderr
    return env


def smc(env, *args):
    return subprocess.run([*SMC, *args], env=env, capture_output=True, text=True, timeout=600)


def rows_differing(database, table: str, columns: str, left: str, right: str) -> int:
    with database.connection() as conn:
        return conn.execute(
            f"SELECT count(*) FROM ((SELECT {columns} FROM {table} WHERE symbol = %(a)s EXCEPT "
            f"SELECT {columns} FROM {table} WHERE symbol = %(b)s) UNION ALL (SELECT {columns} FROM {table} "
            f"WHERE symbol = %(b)s EXCEPT SELECT {columns} FROM {table} WHERE symbol = %(a)s)) AS d",
            {"a": left, "b": right}).fetchone()[0]


@pytest.mark.slow
def test_a_ranged_backfill_stores_what_a_run_per_day_stores(home, database):
    per_day = smc(home, "backfill", "--symbols", "ES", "--days-per-run", "1", "-q")
    ranged = smc(home, "backfill", "--symbols", "MES", "-q")
    assert per_day.returncode == 0 and ranged.returncode == 0, per_day.stderr[-3000:] + ranged.stderr[-3000:]
    assert "4 of 4 partition(s) materialized, 0 failed (4 run(s))" in per_day.stdout
    assert "4 of 4 partition(s) materialized, 0 failed (1 run(s))" in ranged.stdout

    with database.connection() as conn:
        counts = dict(conn.execute("SELECT symbol || ' ' || timeframe, count(*) FROM features "
                                   "GROUP BY symbol, timeframe").fetchall())
    assert counts["ES 1m"] == counts["MES 1m"] == 4 * 1380
    assert counts["ES 5m"] == counts["MES 5m"] == 4 * 276  # resampled in the database: SMC_RESAMPLED's default
    assert rows_differing(database, "features", "ts, timeframe, feature_set, values", "ES", "MES") == 0
    assert rows_differing(database, "labels", "ts, timeframe, horizon, label, t1, ret, barrier", "ES", "MES") == 0

    os.environ["DAGSTER_HOME"], before = home["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        instance = DagsterInstance.get()
        for asset in ("bars", "features", "labels"):
            done = instance.get_materialized_partitions(AssetKey(asset))
            for day in DAYS:  # the range's run recorded each partition, as a run per day does
                assert f"{day}|MES" in done and f"{day}|ES" in done, (asset, day)
        runs = [r for r in instance.get_runs() if r.tags.get("smc/backfill")]
        ranged_run = [r for r in runs if "dagster/asset_partition_range_start" in r.tags]
        assert len(runs) == 5 and len(ranged_run) == 1
        assert ranged_run[0].tags["dagster/asset_partition_range_end"] == "2024-03-07|MES"
    finally:
        if before is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = before


@pytest.mark.slow
def test_a_failing_day_inside_a_range_is_named_and_the_other_days_are_kept(home, database):
    with database.connection() as conn:  # MNQ's second session loses its bars
        conn.execute("DELETE FROM bars WHERE symbol = 'MNQ' AND ts > '2024-03-04 23:00Z' AND ts <= '2024-03-05 22:00Z'")
    done = smc(home, "backfill", "--symbols", "MNQ", "-q")
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "3 of 4 partition(s) materialized, 1 failed (5 run(s))" in done.stdout, done.stdout  # the range, then a day at a time
    failed = [line for line in done.stdout.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and re.match(r"failed 2024-03-05\|MNQ \(run \w+-.*\): .*no bars for MNQ on 2024-03-05",
                                         failed[0]), failed
    with database.connection() as conn:
        featured = conn.execute("SELECT count(*) FROM features WHERE symbol = 'MNQ' AND timeframe = '1m'"
                                ).fetchone()[0]
        labelled = conn.execute("SELECT count(*) FROM labels WHERE symbol = 'MNQ' AND timeframe = '1m'"
                                ).fetchone()[0]
    assert featured == labelled == 3 * 1380
