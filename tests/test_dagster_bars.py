"""The bars asset, its checks and the landing-file sensor, run by Dagster itself."""

from __future__ import annotations

import json
from datetime import date

import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from sensors.file_drop import build_file_drop_sensor
from smc_assets.bars import bars
from smc_assets.partitions import SYMBOLS, bar_partition_key
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.synthetic import SyntheticConfig, write_synthetic

DAY1, DAY2 = date(2024, 3, 5), date(2024, 3, 6)


@pytest.fixture()
def setup(database, tmp_path):
    landing = tmp_path / "landing"
    instance = DagsterInstance.ephemeral()
    resources = {"database": DatabaseResource(url=database.url), "landing": LandingResource(path=str(landing))}
    return instance, resources, landing


def run_bars(instance, resources, symbol, day):
    instance.add_dynamic_partitions(SYMBOLS.name, [symbol])
    return materialize([bars], partition_key=bar_partition_key(symbol, day), resources=resources,
                       instance=instance, raise_on_error=False)


def checks_of(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_materializing_a_partition_loads_the_day_and_passes_its_checks(setup, database):
    instance, resources, landing = setup
    write_synthetic(SyntheticConfig(days=2, start=DAY1, instrument=_instrument("ES")), landing)
    result = run_bars(instance, resources, "ES", DAY2)
    assert result.success
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["rows_inserted"].value == 1380 and metadata["stored_bars"].value == 1380
    checks = checks_of(result)
    assert set(checks) == {"ohlc_integrity", "no_conflicting_duplicates", "session_coverage"}
    assert all(c.passed for c in checks.values())
    assert checks["session_coverage"].metadata["missing_bars"].value == 0

    again = run_bars(instance, resources, "ES", DAY2)  # backfilling again changes nothing
    metadata = again.get_asset_materialization_events()[0].materialization.metadata
    assert (metadata["rows_inserted"].value, metadata["rows_unchanged"].value) == (0, 1380)


def test_checks_fail_on_bad_stored_bars_and_gaps(setup, database):
    instance, resources, landing = setup
    write_synthetic(SyntheticConfig(days=1, start=DAY1, instrument=_instrument("NQ")), landing)
    exported = next((landing / "NQ").glob("*.txt"))
    lines = exported.read_text().splitlines()
    exported.write_text("\n".join(lines[:600] + lines[700:]) + "\n")  # 100 bars missing
    with database.connection() as conn:  # a bar off the 1-minute grid, written behind the ingest's back
        conn.execute("SELECT smc_prepare_time_range('bars', '2024-03-05', '2024-03-05')")
        conn.execute("INSERT INTO bars VALUES ('NQ', '1m', '2024-03-05 15:31:30Z', 1, 2, 0.5, 1.5, 1, NULL, 0)")
    result = run_bars(instance, resources, "NQ", DAY1)
    checks = checks_of(result)
    assert not checks["ohlc_integrity"].passed
    assert checks["ohlc_integrity"].metadata["off_grid_timestamps"].value == 1
    assert not checks["session_coverage"].passed
    assert checks["session_coverage"].metadata["missing_bars"].value == 100
    assert checks["session_coverage"].metadata["largest_gap_bars"].value == 100


def test_conflicting_files_are_reported_and_newest_wins(setup, database):
    instance, resources, landing = setup
    write_synthetic(SyntheticConfig(days=1, start=DAY1, instrument=_instrument("YM")), landing)
    original = next((landing / "YM").glob("*.txt"))
    lines = original.read_text().splitlines()
    fields = lines[10].split(";")
    fields[5] = str(int(fields[5]) + 5)
    (landing / "YM" / "YM correction.txt").write_text(";".join(fields) + "\n" + lines[11] + "\n")
    result = run_bars(instance, resources, "YM", DAY1)
    check = checks_of(result)["no_conflicting_duplicates"]
    assert not check.passed
    assert (check.metadata["conflicting_duplicates"].value, check.metadata["identical_duplicates"].value) == (1, 1)
    with database.connection() as conn:
        volume = conn.execute("SELECT volume FROM bars WHERE symbol = 'YM' ORDER BY ts OFFSET 10 LIMIT 1").fetchone()[0]
    assert volume == int(fields[5])


def test_rejected_rows_fail_the_partition_and_write_nothing(setup, database):
    instance, resources, landing = setup
    (landing / "RTY").mkdir(parents=True)
    (landing / "RTY" / "bad.txt").write_text("20240305 093100;1;2;0.5;1.5;1\n20240305 093200;1;0.1;0.5;1.5;1\n")
    result = run_bars(instance, resources, "RTY", DAY1)
    assert not result.success
    failure = result.failure_data_for_node("bars")
    assert "bad.txt:2: high 0.1 is below max(open, close) 1.5" in failure.error.message + str(failure.user_failure_data)
    with database.connection() as conn:
        assert conn.execute("SELECT count(*) FROM bars WHERE symbol = 'RTY'").fetchone()[0] == 0
        # the refused attempt is logged as the schema says, with the run and partition that made it
        logged = conn.execute(
            """SELECT id, status, rows_read, rows_rejected, dagster_run_id, partition_key, error FROM ingest_log
               WHERE symbol = 'RTY'""").fetchall()
        rejects = conn.execute("SELECT line, raw FROM ingest_rejects WHERE ingest_id = %s", (logged[0][0],)).fetchall()
    assert [row[1:6] for row in logged] == [("rejected", 2, 1, result.run_id, bar_partition_key("RTY", DAY1))]
    assert "bad.txt:2: high 0.1 is below max(open, close) 1.5" in logged[0][6]
    assert rejects == [(2, "20240305 093200;1;0.1;0.5;1.5;1")]
    assert failure.user_failure_data.metadata["ingest_id"].value == logged[0][0]


def test_an_export_cut_off_mid_line_fails_the_partition_instead_of_storing_a_short_bar(setup, database):
    """The last line's volume 120 was cut to 12 (no line end follows): it parses, so only the
    missing line end gives it away."""
    instance, resources, landing = setup
    (landing / "M2K").mkdir(parents=True)
    (landing / "M2K" / "cut.txt").write_text("20240305 093100;1;2;0.5;1.5;100\n20240305 093200;1;2;0.5;1.5;12")
    result = run_bars(instance, resources, "M2K", DAY1)
    assert not result.success
    assert "cut.txt:2: the file ends inside this line" in str(result.failure_data_for_node("bars").user_failure_data)
    with database.connection() as conn:
        assert conn.execute("SELECT count(*) FROM bars WHERE symbol = 'M2K'").fetchone()[0] == 0
        assert conn.execute("SELECT status, rows_read, rows_rejected FROM ingest_log WHERE symbol = 'M2K'").fetchall() \
            == [("rejected", 2, 1)]


def test_partition_without_data_fails_with_a_clear_reason(setup):
    instance, resources, landing = setup
    landing.mkdir(parents=True, exist_ok=True)
    result = run_bars(instance, resources, "ZN", DAY1)
    assert not result.success
    assert "no bars for ZN on 2024-03-05" in str(result.failure_data_for_node("bars").user_failure_data.description)


def test_file_sensor_requests_exactly_the_covered_partitions_once(setup, database):
    instance, resources, landing = setup
    sensor = build_file_drop_sensor("market_data_job")
    paths = write_synthetic(SyntheticConfig(days=2, start=DAY1, instrument=_instrument("CL")), landing)

    def tick(cursor):
        with build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
            return sensor(context)

    first = tick(None)
    keys = sorted(str(r.partition_key) for r in first.run_requests)
    assert keys == ["2024-03-05|CL", "2024-03-06|CL"]
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["CL"]]
    assert len({r.run_key for r in first.run_requests}) == 2

    second = tick(first.cursor)
    assert second.run_requests == [] or second.run_requests is None

    instance.add_dynamic_partitions(SYMBOLS.name, ["CL"])
    lines = paths[1].read_text().splitlines()
    fields = lines[5].split(";")
    fields[5] = str(int(fields[5]) + 1)
    lines[5] = ";".join(fields)
    paths[1].write_text("\n".join(lines) + "\n")
    third = tick(second.cursor)
    assert [str(r.partition_key) for r in third.run_requests] == ["2024-03-06|CL"]
    assert not third.dynamic_partitions_requests
    assert json.loads(third.cursor)["files"][str(paths[1])] != json.loads(first.cursor)["files"][str(paths[1])]


def _instrument(symbol):
    from smc_core.synthetic import Instrument
    return Instrument(symbol=symbol)
