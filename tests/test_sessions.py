"""Instruments, exchange calendars and the bar-count reconciliation, on real PostgreSQL and real
Dagster runs: every stored bar is in a session (and gets features and labels) or is counted
outside one; holidays and early closes are sessions as the exchange has them, never "no bars"."""

from __future__ import annotations

from datetime import date, time, timedelta

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from smc_assets.bars import bars
from smc_assets.features import features
from smc_assets.labels import labels
from smc_assets.partitions import SYMBOLS, bar_partition_key
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.calendar import CME_EQUITY, SessionCalendar
from smc_core.errors import ConfigError
from smc_core.ingest import ingest_file
from smc_core.instruments import BUILT_IN, instrument, instruments
from smc_core.synthetic import SyntheticConfig, generate_bars

# --- instruments -------------------------------------------------------------------------


def test_built_in_instruments_cover_the_common_cme_futures_and_micros():
    known = instruments(BUILT_IN)
    for symbol in ("ES", "NQ", "YM", "RTY", "CL", "GC", "SI", "ZN", "ZB", "6E", "6J",
                   "MES", "MNQ", "MYM", "M2K", "MCL", "MGC", "SIL", "M6E", "MJY"):
        assert symbol in known, symbol
    assert (known["ZN"].tick_size, known["ZN"].tick_value) == (1 / 64, 15.625)
    assert known["MES"].multiplier == 5.0 and known["ES"].multiplier == 50.0
    assert known["CL"].calendar().name == "CMEGlobex_Energy" and known["6E"].zone == "America/Chicago"
    assert known["ES"].costs().round_trip_cost() == 2 * (2.50 + 12.50)  # commission + one tick, each side


def test_your_file_adds_symbols_and_changes_values_key_by_key(tmp_path):
    path = tmp_path / "instruments.toml"
    path.write_text('[ES]\ncommission = 1.2\n\n[EURUSD]\ntick_size = 0.00001\ntick_value = 1.0\ncalendar = "24/5"\n')
    mine = instruments(path)
    assert mine["ES"].commission == 1.2 and mine["ES"].tick_value == 12.5 and mine["ES"].source == str(path)
    assert mine["EURUSD"].calendar().tz == "America/New_York" and mine["EURUSD"].slippage_ticks == 1.0


@pytest.mark.parametrize("text, message", [
    ('[X]\ntick_size = 0.1\ntick_value = 1\n', "missing calendar"),
    ('[X]\ntick_size = 0.1\ntick_value = 1\ncalendar = "Moon"\n', "unknown session calendar 'Moon'"),
    ('[X]\ntick_size = "a"\ntick_value = 1\ncalendar = "24/7"\n', "tick_size must be a number"),
    ('[X]\ntick_size = 0.1\ntick_value = 1\ncalendar = "24/7"\ntickvalue = 2\n', "unknown key(s) tickvalue"),
    ('[X\n', "not valid TOML"),
])
def test_a_bad_entry_is_an_error_naming_the_file_and_the_table(tmp_path, text, message):
    path = tmp_path / "instruments.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        instruments(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_an_unknown_symbol_names_the_file_to_edit(tmp_path):
    path = tmp_path / "instruments.toml"
    with pytest.raises(ConfigError) as error:
        instrument("EURUSD", path)
    assert f"add a [EURUSD] table to {path}" in str(error.value) and "6E" in str(error.value)


# --- calendars -------------------------------------------------------------------------------

def test_holidays_and_early_closes_are_the_exchanges():
    utc = lambda text: pd.Timestamp(text, tz="UTC")  # noqa: E731
    # Christmas Eve 2024: CME Globex equity closes at 12:15 Chicago; Christmas has no session
    assert CME_EQUITY.session_bounds(date(2024, 12, 24)) == (utc("2024-12-23 23:00"), utc("2024-12-24 18:15"))
    assert not CME_EQUITY.is_trading_day(date(2024, 12, 25))
    assert CME_EQUITY.partition_bounds(date(2024, 12, 26)) == (utc("2024-12-24 18:15"), utc("2024-12-26 22:00"))
    assert len(CME_EQUITY.expected_closes(date(2024, 12, 24), timedelta(minutes=1))) == 19 * 60 + 15
    assert len(CME_EQUITY.expected_closes(date(2024, 12, 25), timedelta(minutes=1))) == 0
    nyse = SessionCalendar("NYSE", time(9, 30), time(16))
    assert nyse.expected_closes(date(2024, 11, 29), timedelta(days=1))[0] == utc("2024-11-29 18:00")  # 13:00 NY
    fx, always = SessionCalendar("24/5"), SessionCalendar("24/7")
    assert fx.session_bounds(date(2024, 3, 11)) == (utc("2024-03-10 21:00"), utc("2024-03-11 21:00"))  # DST Sunday
    assert not fx.is_trading_day(date(2024, 3, 9)) and always.is_trading_day(date(2024, 3, 9))
    assert always.session_bounds(date(2024, 3, 9)) == (utc("2024-03-09"), utc("2024-03-10"))


def test_daily_stamps_move_to_the_session_close():
    nyse = SessionCalendar("NYSE", time(9, 30), time(16))
    stamps = pd.Series(pd.DatetimeIndex(["2024-03-05 00:00", "2024-03-06 16:00", "2024-03-09 00:00"])
                       .tz_localize("America/New_York").tz_convert("UTC"))
    closes = nyse.stamp_sessions(stamps)
    assert list(pd.DatetimeIndex(closes[:2].view("M8[ns]"), tz="UTC")) == [
        pd.Timestamp("2024-03-05 21:00", tz="UTC"), pd.Timestamp("2024-03-06 21:00", tz="UTC")]
    assert closes[2] == np.iinfo(np.int64).min  # a Saturday names no session


# --- the assets: reconciliation, holidays, early closes ------------------------------------------

@pytest.fixture()
def run(database):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SYMBOLS.name, ["ES", "SPY"])

    def materialized(symbol: str, day: date, timeframe: str, out_of_session: str = "exclude"):
        resources = {"database": DatabaseResource(url=database.url),
                     "landing": LandingResource(path="/nonexistent", timeframe=timeframe,
                                                out_of_session=out_of_session)}
        return materialize([bars, features, labels], partition_key=bar_partition_key(symbol, day),
                           resources=resources, instance=instance, raise_on_error=False,
                           run_config={"ops": {"labels": {"config": {"horizons": [{"bars": 4}]}}}})
    return materialized


def _es_hours_around_christmas(tmp_path) -> tuple[pd.DataFrame, str]:
    """ES hourly bars of 2024-12-17 … 27 from the synthetic market on the CME calendar, plus bars a
    vendor's continuous feed has in the daily halt and on Christmas Day (outside every session)."""
    generated = generate_bars(SyntheticConfig(days=8, start=date(2024, 12, 17), timeframe=timedelta(hours=1)))
    extra_at = pd.DatetimeIndex(["2024-12-18 22:30", "2024-12-19 23:00", "2024-12-25 15:00", "2024-12-25 18:00"],
                                tz="UTC")  # 16:30 and 17:00 Chicago (halt), Christmas 09:00 and 12:00
    extra_at = extra_at[[ts.minute == 0 for ts in extra_at]]
    template = generated.iloc[[0] * len(extra_at)].assign(ts=extra_at)
    frame = pd.concat([generated, template]).sort_values("ts").reset_index(drop=True)
    path = tmp_path / "es_1h.csv"
    frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).drop(columns="delta").to_csv(path, index=False)
    return frame, str(path)


def test_every_stored_bar_is_in_a_session_or_counted_outside_one(database, run, tmp_path):
    frame, path = _es_hours_around_christmas(tmp_path)
    assert ingest_file(database, path, "ES", "1h").rows_inserted == len(frame)
    days = [date(2024, 12, 17) + timedelta(days=i) for i in range(11)]
    results = {day: run("ES", day, "1h") for day in days}
    assert all(r.success for r in results.values()), [d for d, r in results.items() if not r.success]

    coverage = {day: {e.check_name: e for e in r.get_asset_check_evaluations()}["session_coverage"].metadata
                for day, r in results.items()}
    stored = sum(m["stored_bars"].value for m in coverage.values())
    inside = sum(m["in_session_bars"].value for m in coverage.values())
    outside = sum(m["out_of_session_bars"].value for m in coverage.values())
    with database.connection() as conn:
        total = conn.execute("SELECT count(*) FROM bars WHERE symbol = 'ES'").fetchone()[0]
        featured = conn.execute("SELECT count(*) FROM features WHERE symbol = 'ES'").fetchone()[0]
        labelled = conn.execute("SELECT count(*) FROM labels WHERE symbol = 'ES'").fetchone()[0]
    # hand count: 8 sessions, 23 hourly bars each but Christmas Eve (17:00 to 12:15: 19) → 180 in session;
    # the 17:00 Chicago bar of 12-19 (halt hour) and the two of Christmas Day lie outside every session
    assert (total, stored, inside, outside) == (len(frame), 183, 180, 3)
    assert featured == labelled == inside
    assert coverage[date(2024, 12, 20)]["out_of_session_bars"].value == 1
    assert coverage[date(2024, 12, 26)]["out_of_session_bars"].value == 2
    assert coverage[date(2024, 12, 26)]["out_of_session_examples"].value[0].startswith("2024-12-25T09:00:00-06:00")

    # the holiday and the weekend: materialized, "no session", nothing expected, no failure
    christmas = results[date(2024, 12, 25)].get_asset_materialization_events()
    assert "no session" in christmas[0].materialization.metadata["session"].value
    assert coverage[date(2024, 12, 25)]["expected_bars"].value == 0
    assert coverage[date(2024, 12, 21)]["expected_bars"].value == 0
    # the early close: a shorter session, fully present
    eve = coverage[date(2024, 12, 24)]
    assert (eve["expected_bars"].value, eve["missing_bars"].value) == (19, 0)
    assert "shortened" in eve["session"].value


def test_out_of_session_bars_can_join_the_session_or_fail_the_partition(database, run, tmp_path):
    frame, path = _es_hours_around_christmas(tmp_path)
    ingest_file(database, path, "ES", "1h")
    included = run("ES", date(2024, 12, 20), "1h", "include")
    assert included.success
    with database.connection() as conn:
        halt_row = conn.execute("SELECT count(*) FROM features WHERE symbol = 'ES' AND ts = '2024-12-19 23:00Z'"
                                ).fetchone()[0]
    assert halt_row == 1
    failed = run("ES", date(2024, 12, 20), "1h", "fail")
    assert not failed.success
    error = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "lie outside every session" in error.step_failure_data.error.message


def test_daily_bars_of_an_equity_at_the_real_close(database, run, tmp_path):
    """A daily file of dates and 16:00 New York times: stored at the NYSE close, a holiday has no
    session, Black Friday's early close (13:00) is its bar's stamp."""
    spec = tmp_path / "instruments.toml"
    spec.write_text('[SPY]\ntick_size = 0.01\ntick_value = 0.01\ncalendar = "NYSE"\nrth = "09:30-16:00"\n')
    import os

    os.environ["SMC_INSTRUMENTS"] = str(spec)
    try:
        path = tmp_path / "spy.csv"
        path.write_text("ts,open,high,low,close,volume\n2024-11-26,598.8,600.8,597.5,600.7,45621\n"
                        "2024-11-27 16:00,600.5,600.9,597.2,598.8,34000\n2024-11-29,599.6,603.3,599.4,602.5,30177\n")
        report = ingest_file(database, path, "SPY", "1d")
        assert report.rows_inserted == 3 and report.rows_rejected == 0
        with database.connection() as conn:
            stamps = [r[0] for r in conn.execute("SELECT ts FROM bars WHERE symbol = 'SPY' ORDER BY ts")]
        assert [pd.Timestamp(ts).tz_convert("America/New_York").strftime("%m-%d %H:%M") for ts in stamps] == [
            "11-26 16:00", "11-27 16:00", "11-29 13:00"]
        thanksgiving = run("SPY", date(2024, 11, 28), "1d")
        assert thanksgiving.success
        coverage = {e.check_name: e for e in thanksgiving.get_asset_check_evaluations()}["session_coverage"]
        assert coverage.metadata["expected_bars"].value == 0 and coverage.passed
    finally:
        del os.environ["SMC_INSTRUMENTS"]
