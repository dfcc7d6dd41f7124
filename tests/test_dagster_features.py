"""features and labels assets: day-by-day equals whole range, stored rows equal the
service's recomputation from a 50-bar request, labels stored with t1."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from smc_assets.bars import bars
from smc_assets.features import features
from smc_assets.labels import labels
from smc_assets.partitions import SYMBOLS, bar_partition_key
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.calendar import CME_EQUITY
from smc_core.features import CATALOGUE, compute_features
from smc_core.store import load_bars, read_features, read_labels
from smc_core.synthetic import Instrument, SyntheticConfig, write_synthetic

DAYS = [date(2024, 3, 5), date(2024, 3, 6)]
SYMBOL = "ES"
REQUEST_BARS = 50


@pytest.fixture(scope="module")
def materialized(database, tmp_path_factory):
    landing = tmp_path_factory.mktemp("landing")
    write_synthetic(SyntheticConfig(days=2, start=DAYS[0], instrument=Instrument(symbol=SYMBOL), seed=5), landing)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SYMBOLS.name, [SYMBOL])
    resources = {"database": DatabaseResource(url=database.url), "landing": LandingResource(path=str(landing))}
    results = [materialize([bars, features, labels], partition_key=bar_partition_key(SYMBOL, day),
                           resources=resources, instance=instance) for day in DAYS]
    return results


def test_all_checks_pass_and_metadata_is_reported(materialized):
    for result in materialized:
        assert result.success
        evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations == {"ohlc_integrity": True, "no_conflicting_duplicates": True, "session_coverage": True,
                               "no_nan_after_warmup": True, "causality_spot_check": True, "labels_resolved": True,
                               "horizon_fits_session": True}
        by_asset = {e.asset_key.to_user_string(): e.materialization.metadata
                    for e in result.get_asset_materialization_events()}
        assert by_asset["features"]["rows"].value == 1380
        assert by_asset["features"]["rows (5m)"].value == 276  # resampled in the database from the 1-minute bars
        assert by_asset["features"]["timeframes"].value == "1m, 5m"
        assert by_asset["features"]["feature_set"].value == CATALOGUE.version
        assert "| atr |" in by_asset["features"]["summary"].value
        counts = next(iter(by_asset["labels"]["label_counts"].value.values()))
        assert sum(counts.values()) == 1380
        counts_5m = next(iter(by_asset["labels"]["label_counts (5m)"].value.values()))
        assert sum(counts_5m.values()) == 276


@pytest.mark.parametrize(("timeframe", "bars_per_day"), [("1m", 1380), ("5m", 276)])
def test_day_by_day_equals_the_whole_range(database, materialized, timeframe, bars_per_day):
    first_open, _ = CME_EQUITY.session_bounds(DAYS[0])
    _, last_close = CME_EQUITY.session_bounds(DAYS[-1])
    whole = compute_features(load_bars(database, SYMBOL, timeframe, first_open, last_close,
                                       resampled=timeframe != "1m"))
    stored = read_features(database, SYMBOL, timeframe, first_open, last_close, CATALOGUE)
    assert len(stored) == len(whole) == 2 * bars_per_day
    assert np.array_equal(stored.to_numpy(), whole.to_numpy(), equal_nan=True)


def test_resampled_bars_are_the_one_minute_bars_aggregated_by_close_time(database, materialized):
    start, end = CME_EQUITY.session_bounds(DAYS[1])
    minute = load_bars(database, SYMBOL, "1m", start, end).set_index("ts")
    five = load_bars(database, SYMBOL, "5m", start, end, resampled=True).set_index("ts")
    buckets = minute.resample("5min", closed="right", label="right")
    expected = buckets.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    expected["delta"] = buckets["delta"].sum(min_count=1)  # no delta in the data: none in the bar either
    assert len(five) == 276 and five.index.equals(expected.index)
    assert np.array_equal(five.to_numpy(), expected[five.columns].to_numpy(), equal_nan=True)


@pytest.mark.parametrize("timeframe", ["1m", "5m"])
def test_service_recomputation_from_a_50_bar_request_equals_stored_rows(database, materialized, timeframe):
    first_open, _ = CME_EQUITY.session_bounds(DAYS[0])
    start, end = CME_EQUITY.session_bounds(DAYS[1])
    stored = read_features(database, SYMBOL, timeframe, first_open, end, CATALOGUE)
    history = load_bars(database, SYMBOL, timeframe, start, end, history=REQUEST_BARS, resampled=timeframe != "1m")
    complete_rows = REQUEST_BARS - CATALOGUE.max_lookback + 1
    rng = np.random.default_rng(0)
    compared = 0
    for t in rng.choice(np.arange(REQUEST_BARS, len(history)), size=40, replace=False):
        request = history.iloc[t - REQUEST_BARS + 1: t + 1]  # what NinjaTrader would send
        served = compute_features(request).iloc[-complete_rows:]
        expected = stored.loc[served.index]
        assert np.array_equal(served.to_numpy(), expected.to_numpy(), equal_nan=False)
        compared += len(served)
    assert compared == 40 * complete_rows


@pytest.mark.parametrize(("timeframe", "bars_per_day"), [("1m", 1380), ("5m", 276)])
def test_labels_are_stored_with_their_outcome_time(database, materialized, timeframe, bars_per_day):
    start, end = CME_EQUITY.session_bounds(DAYS[1])
    stored = read_labels(database, SYMBOL, timeframe, "h15_u1.5_d1.5", start, end)
    assert len(stored) == bars_per_day
    assert set(stored["label"]) <= {0, 1, 2}  # the session is over: nothing unknown
    assert (stored["t1"] >= stored["ts"]).all() and (stored["t1"] <= end).all()
    assert stored["barrier"].iloc[-1] == "session_end"


def test_features_without_bars_fail_with_a_clear_reason(database, tmp_path):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SYMBOLS.name, ["ZB"])
    result = materialize([features], partition_key=bar_partition_key("ZB", DAYS[0]), instance=instance,
                         resources={"database": DatabaseResource(url=database.url),
                                    "landing": LandingResource(path=str(tmp_path))}, raise_on_error=False)
    assert not result.success
    reason = result.failure_data_for_node("features").user_failure_data.description
    assert reason.startswith("no 1m bars to compute features from for ZB on 2024-03-05: no stored bars for symbol 'ZB'")
