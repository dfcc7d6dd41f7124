"""The risk block's arithmetic and the time exit it can carry, by hand: what the strategy is told
to trade must be what the backtest behind the gates traded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smc_core.errors import ConfigError
from smc_core.evaluation.backtest import InstrumentSpec, backtest
from smc_core.policy import PolicyConfig
from smc_core.risk import RiskTerms

LONG_CALL = [0.9, 0.05, 0.05]


def test_distances_are_whole_ticks_and_prices_follow_the_call():
    terms = RiskTerms(stop_atr=1.5, target_atr=2.0, tick_size=0.25)
    long = terms.block(close=5000.25, atr=2.1, label="long")
    assert long["stop_distance"] == 3.25 and long["target_distance"] == 4.25  # 3.15 → 13 ticks, 4.2 → 17 ticks
    assert (long["stop_price"], long["target_price"]) == (4997.0, 5004.5)
    short = terms.block(close=5000.25, atr=2.1, label="short")
    assert (short["stop_price"], short["target_price"]) == (5003.5, 4996.0)
    skip = terms.block(close=5000.25, atr=2.1, label="skip")
    assert skip["stop_price"] is None and skip["target_price"] is None and skip["stop_distance"] == 3.25
    tiny = terms.block(close=5000.0, atr=0.01, label="long")
    assert tiny["stop_distance"] == 0.25  # never less than one tick
    fx = RiskTerms(tick_size=0.00005).block(close=1.08415, atr=0.00031, label="long")
    assert fx["stop_distance"] == pytest.approx(0.00045) and fx["stop_price"] == pytest.approx(1.0837)


def test_terms_travel_as_registry_tags_and_refuse_nonsense():
    terms = RiskTerms.of(PolicyConfig(stop_atr=1.25, target_atr=2.5, max_holding_bars=15),
                         InstrumentSpec(tick_size=0.1))
    assert RiskTerms.from_tags(terms.to_tags()) == terms
    assert RiskTerms.from_tags({"entry_threshold": "0.6"}) is None  # promoted before terms were recorded
    for bad in ({"stop_atr": 0}, {"tick_size": float("nan")}, {"max_holding_bars": 0}):
        with pytest.raises(ConfigError):
            RiskTerms(**bad)


def test_the_backtest_honours_a_time_exit_when_one_is_set():
    n = 12
    prices = np.full(n, 100.0)
    bars = pd.DataFrame({"ts": pd.date_range("2024-03-05 14:31", periods=n, freq="min", tz="UTC"), "open": prices,
                         "high": prices, "low": prices, "close": prices, "atr": 1.0, "session": 0})
    calls = np.full((n, 3), np.nan)
    calls[0] = LONG_CALL  # filled at bar 1's open; flat prices: neither stop nor target is reached
    free = InstrumentSpec(commission=0, slippage_ticks=0)
    held = backtest(bars, calls, PolicyConfig(contracts=1), free).trades.iloc[0]
    assert held["reason"] == "session_close" and held["exit_ts"] == bars["ts"][n - 1]
    timed = backtest(bars, calls, PolicyConfig(contracts=1, max_holding_bars=3), free).trades.iloc[0]
    assert timed["reason"] == "time" and timed["exit_ts"] == bars["ts"][3]  # bars 1, 2, 3 held
