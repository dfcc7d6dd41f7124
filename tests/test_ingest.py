"""Ingest against a real PostgreSQL: exact round trips, idempotency, atomicity."""

from __future__ import annotations

import threading
import time
from datetime import date

import numpy as np
import pandas as pd
import psycopg
import pytest

from smc_core.db import Database
from smc_core.errors import BarFileError, RejectedRowsError
from smc_core.ingest import file_sha256, ingest_file, write_logged
from smc_core.migrations import migrate, storage_mode
from smc_core.settings import Settings
from smc_core.synthetic import SyntheticConfig, generate_bars, write_ninjatrader, write_synthetic


def stored(db, symbol, timeframe="1m"):
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT ts, open, high, low, close, volume, delta FROM bars WHERE symbol = %s AND timeframe = %s ORDER BY ts",
            (symbol, timeframe)).fetchall()
    frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume", "delta"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    frame["delta"] = frame["delta"].astype("float64")
    return frame


def count(db, table, where="true", params=()):
    with db.connection() as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0]


@pytest.mark.parametrize("start", [date(2024, 3, 6), date(2024, 10, 30)], ids=["spring-forward", "fall-back"])
def test_ninjatrader_round_trip_is_exact_across_dst(database, tmp_path, start):
    symbol = "RT" + str(start.month)
    config = SyntheticConfig(days=4, start=start, seed=3)
    bars = generate_bars(config)
    path = write_ninjatrader(bars, tmp_path / f"{symbol} export.txt", tz="America/Chicago")
    report = ingest_file(database, path, symbol, "1m", tz="America/Chicago")
    assert (report.rows_read, report.rows_inserted, report.rows_rejected) == (len(bars), len(bars), 0)
    back = stored(database, symbol)
    columns = ["ts", "open", "high", "low", "close", "volume"]
    pd.testing.assert_frame_equal(back[columns], bars[columns].reset_index(drop=True), check_exact=True)
    assert back["delta"].isna().all()  # NinjaTrader exports carry no delta
    offsets = back["ts"].dt.tz_convert("America/Chicago").map(lambda t: t.utcoffset()).unique()
    assert len(offsets) == 2  # the data really spans a DST switch


def test_csv_delta_round_trip_and_fold_hour(database, tmp_path):
    files = write_synthetic(SyntheticConfig(days=2, start=date(2024, 5, 6), seed=5), tmp_path, fmt="csv")
    bars = generate_bars(SyntheticConfig(days=2, start=date(2024, 5, 6), seed=5))
    for path in files:
        ingest_file(database, path, "DL", "1m", tz="America/Chicago")
    back = stored(database, "DL")
    pd.testing.assert_series_equal(back["delta"], bars["delta"].reset_index(drop=True), check_names=False)

    fold = tmp_path / "fold.txt"  # a 24-hour market through the repeated 01:00 hour
    fold.write_text("20241103 013000;1;2;0.5;1.5;1\n20241103 010000;1;2;0.5;1.5;1\n"
                    "20241103 013000;1;2;0.5;1.5;1\n20241103 020000;1;2;0.5;1.5;1\n")
    ingest_file(database, fold, "FOLD", "1m", tz="America/Chicago")
    assert list(stored(database, "FOLD")["ts"].dt.strftime("%H:%M")) == ["06:30", "07:00", "07:30", "08:00"]


def test_reingest_changes_nothing_not_even_row_versions(database, tmp_path):
    path = write_ninjatrader(generate_bars(SyntheticConfig(days=1, seed=11)), tmp_path / "ID.txt")
    first = ingest_file(database, path, "IDEM", "1m", tz="America/Chicago")
    with database.connection() as conn:
        versions = conn.execute("SELECT ts, xmin::text FROM bars WHERE symbol = 'IDEM' ORDER BY ts").fetchall()
    again = ingest_file(database, path, "IDEM", "1m", tz="America/Chicago")
    assert (again.rows_inserted, again.rows_updated, again.rows_unchanged) == (0, 0, first.rows_inserted)
    with database.connection() as conn:
        assert conn.execute("SELECT ts, xmin::text FROM bars WHERE symbol = 'IDEM' ORDER BY ts").fetchall() == versions


def test_corrected_file_updates_only_the_changed_bar(database, tmp_path):
    bars = generate_bars(SyntheticConfig(days=1, seed=12))
    path = write_ninjatrader(bars, tmp_path / "UPD.txt")
    ingest_file(database, path, "UPD", "1m", tz="America/Chicago")
    lines = path.read_text().splitlines()
    fields = lines[100].split(";")
    fields[5] = str(int(fields[5]) + 1)  # a corrected volume
    lines[100] = ";".join(fields)
    path.write_text("\n".join(lines) + "\n")
    report = ingest_file(database, path, "UPD", "1m", tz="America/Chicago")
    assert (report.rows_inserted, report.rows_updated, report.rows_unchanged) == (0, 1, len(bars) - 1)
    assert stored(database, "UPD")["volume"].iloc[100] == bars["volume"].iloc[100] + 1


def logged(db, ingest_id):
    """The ingest_log row of one attempt, as a dict, and its rejected rows (line, reason, raw)."""
    with db.connection() as conn:
        cursor = conn.execute("SELECT * FROM ingest_log WHERE id = %s", (ingest_id,))
        row = dict(zip([c.name for c in cursor.description], cursor.fetchone()))
        rejects = conn.execute("SELECT line, reason, raw FROM ingest_rejects WHERE ingest_id = %s ORDER BY line",
                               (ingest_id,)).fetchall()
    return row, rejects


def test_rejected_rows_write_no_bar_and_the_attempt_is_logged_rejected(database, tmp_path):
    path = tmp_path / "BAD.txt"
    path.write_text("20240305 093100;1;2;0.5;1.5;1\n20240305 093200;1;0.4;0.5;1.5;1\n")
    with pytest.raises(RejectedRowsError) as raised:
        ingest_file(database, path, "BAD", "1m", tz="America/Chicago")
    assert "BAD.txt:2: high 0.4 is below max(open, close) 1.5" in str(raised.value)
    assert count(database, "bars", "symbol = 'BAD'") == 0
    row, rejects = logged(database, raised.value.ingest_id)
    assert {k: row[k] for k in ("source", "format", "symbol", "timeframe", "status", "rows_read", "rows_inserted",
                                "rows_rejected", "skip_invalid")} == {
        "source": str(path), "format": "ninjatrader", "symbol": "BAD", "timeframe": "1m", "status": "rejected",
        "rows_read": 2, "rows_inserted": 0, "rows_rejected": 1, "skip_invalid": False}
    assert row["error"] == str(raised.value) and row["finished_at"] is not None
    assert row["first_ts"] == row["last_ts"] == pd.Timestamp("2024-03-05 15:31Z")  # the valid row it held back
    assert row["source_sha256"] == file_sha256(path)
    assert rejects == [(2, "high 0.4 is below max(open, close) 1.5", "20240305 093200;1;0.4;0.5;1.5;1")]
    assert count(database, "ingest_log", "symbol = 'BAD'") == 1


def test_an_unreadable_file_is_logged_rejected_with_its_error(database, tmp_path):
    path = tmp_path / "COMMA.txt"
    path.write_text("20240305 093100,1,2,0.5,1.5,1\n")
    with pytest.raises(BarFileError) as raised:
        ingest_file(database, path, "COMMA", "1m", tz="America/Chicago")
    row, rejects = logged(database, raised.value.ingest_id)
    assert (row["status"], row["rows_read"], row["format"], row["error"]) == (
        "rejected", 0, None, f"{path}:1: wrong delimiter ',': NinjaTrader exports separate fields with ';' "
                             "(yyyyMMdd HHmmss;open;high;low;close;volume)")
    assert rejects == [] and count(database, "bars", "symbol = 'COMMA'") == 0


CUT = "20240305 093100;5000.25;5001;4999.75;5000.5;120\n20240305 093200;5000.25;5001;4999.75;5000.5;1"


def test_a_file_cut_inside_its_last_number_is_flagged_not_stored(database, tmp_path):
    """The last line's volume 120 cut to 1, no line end after it: a valid-looking bar, refused."""
    path = tmp_path / "CUT.txt"
    path.write_text(CUT)
    with pytest.raises(RejectedRowsError) as raised:
        ingest_file(database, path, "CUT", "1m", tz="America/Chicago")
    assert str(raised.value).startswith(f"{path}:2: the file ends inside this line (no line end after it)")
    assert count(database, "bars", "symbol = 'CUT'") == 0
    row, rejects = logged(database, raised.value.ingest_id)
    assert (row["status"], row["rows_read"], row["rows_rejected"]) == ("rejected", 2, 1)
    assert [(line, raw) for line, _, raw in rejects] == [(2, "20240305 093200;5000.25;5001;4999.75;5000.5;1")]

    kept = ingest_file(database, path, "CUT", "1m", tz="America/Chicago", skip_invalid=True)  # the complete line goes in, the cut one not
    assert (kept.rows_inserted, kept.rows_rejected) == (1, 1)
    assert list(stored(database, "CUT")["volume"]) == [120]

    path.write_text(CUT + "20\n")  # the export finished: the same line, now whole
    whole = ingest_file(database, path, "CUT", "1m", tz="America/Chicago")
    assert (whole.rows_inserted, whole.rows_unchanged, whole.rows_rejected) == (1, 1, 0)
    assert list(stored(database, "CUT")["volume"]) == [120, 120]


def test_a_database_error_mid_ingest_is_logged_failed_and_a_good_file_is_unaffected(database, tmp_path):
    """A real database error inside the write (a constraint the server enforces on the COPY into
    bars): the transaction rolls back, then the attempt is logged 'failed' in its own."""
    bars = generate_bars(SyntheticConfig(days=1, seed=13))
    failing = write_ninjatrader(bars, tmp_path / "FAILS.txt")
    good = write_ninjatrader(bars, tmp_path / "GOOD.txt")
    with database.connection() as conn:
        conn.execute("ALTER TABLE bars ADD CONSTRAINT test_no_fails CHECK (symbol <> 'FAILS')")
    try:
        with pytest.raises(psycopg.errors.CheckViolation) as raised:
            ingest_file(database, failing, "FAILS", "1m", tz="America/Chicago", dagster_run_id="run-1", partition_key="FAILS|2024-01-02")
        report = ingest_file(database, good, "GOOD", "1m", tz="America/Chicago")
    finally:
        with database.connection() as conn:
            conn.execute("ALTER TABLE bars DROP CONSTRAINT test_no_fails")
    assert count(database, "bars", "symbol = 'FAILS'") == 0
    row, rejects = logged(database, raised.value.ingest_id)
    assert {k: row[k] for k in ("source", "symbol", "status", "rows_read", "rows_inserted", "rows_rejected",
                                "dagster_run_id", "partition_key")} == {
        "source": str(failing), "symbol": "FAILS", "status": "failed", "rows_read": len(bars), "rows_inserted": 0,
        "rows_rejected": 0, "dagster_run_id": "run-1", "partition_key": "FAILS|2024-01-02"}
    assert row["error"].startswith("CheckViolation: ") and "test_no_fails" in row["error"]
    assert (row["first_ts"], row["last_ts"]) == (bars["ts"].iloc[0], bars["ts"].iloc[-1])
    assert count(database, "ingest_log", "symbol = 'FAILS'") == 1  # the rolled-back 'succeeded' row is gone

    good_row, good_rejects = logged(database, report.ingest_id)
    assert (good_row["status"], good_row["error"], good_row["rows_inserted"]) == ("succeeded", None, len(bars))
    assert good_rejects == [] and len(stored(database, "GOOD")) == len(bars)

    again = ingest_file(database, failing, "FAILS", "1m", tz="America/Chicago")  # the same file once the database is healthy
    assert again.rows_inserted == len(bars) and logged(database, again.ingest_id)[0]["status"] == "succeeded"


def test_skip_invalid_writes_valid_rows_and_records_rejects(database, tmp_path):
    path = tmp_path / "SKIP.txt"
    path.write_text("20240305 093100;1;2;0.5;1.5;1\n20240305 093200;1;2;0.5;x;1\n20240305 093300;1;2;0.5;1.5;1\n")
    report = ingest_file(database, path, "SKIP", "1m", tz="America/Chicago", skip_invalid=True)
    assert (report.rows_inserted, report.rows_rejected) == (2, 1)
    with database.connection() as conn:
        reject = conn.execute("SELECT source, line, reason, raw FROM ingest_rejects WHERE ingest_id = %s",
                              (report.ingest_id,)).fetchone()
        logged = conn.execute("SELECT rows_rejected, skip_invalid FROM ingest_log WHERE id = %s",
                              (report.ingest_id,)).fetchone()
    assert reject == (str(path), 2, "close is not a number: 'x'", "20240305 093200;1;2;0.5;x;1")
    assert logged == (1, True)


def test_killed_transaction_leaves_the_table_as_before(database):
    n = 400_000
    ts = pd.date_range("2021-01-01", periods=n, freq="min", tz="UTC")
    price = 4000 + np.arange(n) * 0.25
    frame = pd.DataFrame({"ts": ts, "open": price, "high": price + 1, "low": price - 1, "close": price,
                          "volume": np.ones(n), "delta": np.full(n, np.nan)})
    before = count(database, "bars")
    logs_before = count(database, "ingest_log")
    outcome = {}

    def run():
        try:
            write_logged(database, source="killed", sha256=None, fmt="test", symbol="KILL", timeframe="1m",
                         frame=frame, rows_read=n, rejections=[])
            outcome["result"] = "committed"
        except Exception as exc:  # the backend is terminated under it
            outcome["result"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    with psycopg.connect(database.url, autocommit=True) as admin:
        deadline = time.monotonic() + 60
        killed = False
        while not killed and time.monotonic() < deadline and worker.is_alive():
            killed = admin.execute(
                """SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE datname = current_database() AND query LIKE 'COPY bars %%' AND pid <> pg_backend_pid()"""
            ).fetchone()[0] or False
            time.sleep(0.005)
    worker.join(120)
    assert killed, "the COPY finished before it could be terminated"
    assert isinstance(outcome["result"], psycopg.Error)
    database.close()  # drop the pool holding the dead connection
    assert count(database, "bars") == before
    assert count(database, "bars", "symbol = 'KILL'") == 0
    assert count(database, "ingest_log") == logs_before + 1  # the attempt, logged after the rollback
    row, _ = logged(database, outcome["result"].ingest_id)
    assert (row["source"], row["status"], row["rows_read"], row["rows_inserted"]) == ("killed", "failed", n, 0)


def test_database_refuses_invalid_bars_from_any_writer(database):
    with pytest.raises(psycopg.errors.CheckViolation):
        with database.connection() as conn:
            conn.execute("SELECT smc_prepare_time_range('bars', '2024-01-02', '2024-01-02')")
            conn.execute("INSERT INTO bars VALUES ('X', '1m', '2024-01-02 15:00Z', 1, 0.5, 0.4, 1, 1, NULL, 0)")


def test_resampled_views_use_close_time_labels(database, tmp_path):
    path = tmp_path / "RS.txt"
    rows = [f"20240305 09{m:02d}00;{100 + m};{101 + m};{99 + m};{100.5 + m};{m}" for m in range(31, 41)]
    path.write_text("\n".join(rows) + "\n")
    ingest_file(database, path, "RS", "1m", tz="America/Chicago")
    with database.connection() as conn:
        got = conn.execute("SELECT ts, open, high, low, close, volume, bar_count FROM bars_5m "
                           "WHERE symbol = 'RS' ORDER BY ts").fetchall()
    assert [(g[0].isoformat(), *g[1:]) for g in got] == [
        ("2024-03-05T15:35:00+00:00", 131, 136, 130, 135.5, 165, 5),
        ("2024-03-05T15:40:00+00:00", 136, 141, 135, 140.5, 190, 5),
    ]


def _resampled_5m(db, symbol):
    with db.connection() as conn:
        return conn.execute("SELECT ts, open, high, low, close, volume, bar_count FROM bars_5m WHERE symbol = %s "
                            "ORDER BY ts", (symbol,)).fetchall()


def test_resampled_bars_follow_a_corrected_file_at_once(database, tmp_path):
    """A file that corrects bars already aggregated shows in the resampled timeframe the moment
    the ingest returns: on TimescaleDB that needs the refresh of the touched buckets (a
    materialized bucket is not re-read by real-time aggregation); native views need nothing."""
    first = tmp_path / "RC.txt"
    first.write_text("".join(f"20240305 09{m:02d}00;100;101;99;100.5;10\n" for m in range(31, 41)))
    ingest_file(database, first, "RC", "1m", tz="America/Chicago")
    assert [row[4] for row in _resampled_5m(database, "RC")] == [100.5, 100.5]
    if storage_mode(database) == "timescaledb":  # as if the refresh policy had run: both buckets materialized
        with database.connection() as conn:
            conn.autocommit = True
            conn.execute("CALL refresh_continuous_aggregate('bars_5m_agg', NULL, NULL)")
            conn.autocommit = False
    corrected = tmp_path / "RC-corrected.txt"
    corrected.write_text("20240305 093300;100;103;99;102.5;10\n20240305 093500;100;101;97;99.5;10\n")
    report = ingest_file(database, corrected, "RC", "1m", tz="America/Chicago")
    assert report.rows_updated == 2
    got = _resampled_5m(database, "RC")
    assert [(g[2], g[3], g[4]) for g in got] == [(103, 97, 99.5), (101, 99, 100.5)]


def test_refresh_windows_cover_every_touched_bucket_on_timescaledb_and_none_natively(database):
    mode = storage_mode(database)
    first, last = pd.Timestamp("2024-03-05 15:33", tz="UTC"), pd.Timestamp("2024-03-05 16:02", tz="UTC")
    with database.connection() as conn:
        windows = conn.execute("SELECT aggregate, window_start, window_end FROM "
                               "smc_resampled_refresh_windows('1m', %s, %s) ORDER BY aggregate", (first, last)).fetchall()
        other = conn.execute("SELECT count(*) FROM smc_resampled_refresh_windows('5m', %s, %s)",
                             (first, last)).fetchone()[0]
    assert other == 0  # the aggregates read 1-minute bars only
    if mode == "native":
        assert windows == []
        return
    widths = {"bars_15m_agg": pd.Timedelta("15min"), "bars_1h_agg": pd.Timedelta("1h"), "bars_5m_agg": pd.Timedelta("5min")}
    assert [w[0] for w in windows] == sorted(widths)
    for aggregate, start, end in windows:
        width = widths[aggregate]
        # the bucket holding `first` starts after start, the one holding `last` ends before end
        assert pd.Timestamp(start) <= first - width + pd.Timedelta("1us") and pd.Timestamp(end) >= last + width - pd.Timedelta("1us")


def test_timescaledb_aggregates_are_real_time_with_bounded_refresh_policies(database):
    if storage_mode(database) != "timescaledb":
        pytest.skip("TimescaleDB is not installed on this server; the native views are always current")
    with database.connection() as conn:
        realtime = dict(conn.execute(
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name IN ('bars_5m_agg', 'bars_15m_agg', 'bars_1h_agg')").fetchall())
        policies = conn.execute(
            "SELECT hypertable_name, config FROM timescaledb_information.jobs j "
            "JOIN timescaledb_information.continuous_aggregates c "
            "  ON c.materialization_hypertable_name = j.hypertable_name "
            "WHERE j.proc_name = 'policy_refresh_continuous_aggregate' "
            "  AND c.view_name IN ('bars_5m_agg', 'bars_15m_agg', 'bars_1h_agg')").fetchall()
    assert realtime == {"bars_5m_agg": False, "bars_15m_agg": False, "bars_1h_agg": False}
    assert len(policies) == 3
    assert all(config.get("start_offset") not in (None, "") for _, config in policies), policies


def test_embedded_server_is_the_default_without_database_url(tmp_path):
    settings = Settings.from_env({"SMC_HOME": str(tmp_path / "home")})
    assert settings.database_url is None
    db = Database.from_settings(settings)
    applied = migrate(db)
    assert [m.version for m in applied] == sorted(m.version for m in applied) and applied
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
    with db.connection() as conn:
        assert conn.execute("SELECT current_database(), smc_storage_mode()").fetchone() == ("smc", "native")
    db.close()
