"""The trading policy, the backtest's accounting and the gate statistics, on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from smc_core.evaluation.backtest import InstrumentSpec, backtest, undefined_metrics
from smc_core.evaluation.statistics import (deflated_sharpe_ratio, expected_max_sharpe,
                                            probabilistic_sharpe_ratio, probability_of_backtest_overfitting,
                                            sharpe, spa_pvalue)
from smc_core.policy import PolicyConfig, decide

LONG_CALL, SHORT_CALL = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]


# --- policy ----------------------------------------------------------------------------

def test_policy_tiers_position_check_and_protective_orders():
    policy = PolicyConfig(contracts=2, stop_atr=1.5, target_atr=2.0)
    full = decide(LONG_CALL, 0, atr=4.0, config=policy)
    assert (full.action, full.direction, full.contracts, full.size_fraction) == ("enter", 1, 2, 1.0)
    assert (full.stop_distance, full.target_distance) == (6.0, 8.0)
    half = decide([0.3, 0.6, 0.1], 0, atr=4.0, config=policy)
    assert (half.action, half.direction, half.contracts, half.size_fraction) == ("enter", -1, 1, 0.5)
    assert decide([0.5, 0.3, 0.2], 0, 4.0, policy).action == "none"            # below 0.55
    assert decide([0.1, 0.1, 0.8], 2, 4.0, policy).action == "none"            # skip keeps the position
    assert decide(LONG_CALL, 2, 4.0, policy).action == "hold"                  # no pyramiding
    assert decide(SHORT_CALL, 2, 4.0, policy).action == "reverse"              # flip = close, then enter


# --- backtest --------------------------------------------------------------------------

def _bars(prices, sessions=None, atr=1.0, spread=0.0):
    prices = np.asarray(prices, dtype=float)
    n = len(prices)
    return pd.DataFrame({"ts": pd.date_range("2024-03-05 14:31", periods=n, freq="min", tz="UTC"),
                         "open": prices, "high": prices + spread, "low": prices - spread, "close": prices,
                         "atr": atr, "session": sessions if sessions is not None else np.zeros(n, dtype=int)})


def test_zero_edge_with_costs_loses_exactly_the_costs():
    bars = _bars(np.full(400, 5000.0), sessions=np.repeat([0, 1, 2, 3], 100))
    rng = np.random.default_rng(0)
    calls = np.array([LONG_CALL, SHORT_CALL])[rng.integers(0, 2, 400)]
    instrument = InstrumentSpec(commission=2.5, slippage_ticks=1)
    result = backtest(bars, calls, PolicyConfig(contracts=1), instrument)
    trades = len(result.trades)
    assert trades > 50
    assert result.pnl.sum() == pytest.approx(-trades * instrument.round_trip_cost(1), abs=1e-9)
    assert result.pnl.sum() == pytest.approx(result.trades["pnl"].sum(), abs=1e-9)
    assert set(result.trades["reason"]) <= {"reverse", "session_close"}
    free = backtest(bars, calls, PolicyConfig(contracts=1), InstrumentSpec(commission=0, slippage_ticks=0))
    assert free.pnl.sum() == 0


def test_fills_next_open_target_stop_and_session_close_by_hand():
    instrument = InstrumentSpec(commission=2.0, slippage_ticks=1)  # ES: 0.25 points, $50 a point
    policy = PolicyConfig(contracts=1, stop_atr=2.0, target_atr=2.0)
    bars = _bars([100, 100.5, 101, 103, 103, 103], atr=1.0)
    calls = np.full((6, 3), np.nan)
    calls[0] = LONG_CALL                   # decided at bar 0's close, filled at bar 1's open
    result = backtest(bars, calls, policy, instrument)
    trade = result.trades.iloc[0]
    assert trade["entry_price"] == 100.75 and trade["reason"] == "target"       # 100.5 + one tick
    assert trade["exit_price"] == 102.75 - 0.25 and trade["exit_ts"] == bars["ts"][3]
    assert trade["pnl"] == pytest.approx((102.5 - 100.75) * 50 - 4.0)
    assert result.pnl.sum() == pytest.approx(trade["pnl"])

    falling = _bars([100, 100, 99, 97, 96, 96], atr=1.0)
    stopped = backtest(falling, calls, policy, instrument).trades.iloc[0]
    # stop at 100.25 - 2 = 98.25; bar 3 opens at 97, through the stop: filled at the open, minus a tick
    assert stopped["reason"] == "stop" and stopped["exit_price"] == 97 - 0.25

    flat_end = backtest(_bars([100, 100, 100.5, 100.25], atr=1.0), calls[:4], policy, instrument).trades.iloc[0]
    assert flat_end["reason"] == "session_close" and flat_end["exit_price"] == 100.0


def test_undefined_metrics_say_why_instead_of_nan():
    # a market that only rises, traded long: no losing day, so Sortino has no downside to divide by
    path = 5000 + np.arange(300) * 0.25
    bars = _bars(path, sessions=np.repeat(np.arange(3), 100), spread=0.25)
    result = backtest(bars, np.tile(LONG_CALL, (300, 1)), PolicyConfig(contracts=1, stop_atr=50, target_atr=50),
                      InstrumentSpec(commission=0, slippage_ticks=0))
    metrics = result.metrics()
    assert math.isnan(metrics["sortino"]) and metrics["sharpe"] > 0
    why = undefined_metrics(metrics)
    assert why["sortino"] == "undefined: no losing day (no downside deviation)"
    assert "sharpe" not in why and all(math.isnan(metrics[key]) for key in why)
    flat = backtest(bars, np.tile([0.1, 0.1, 0.8], (300, 1)), PolicyConfig(), InstrumentSpec()).metrics()
    assert undefined_metrics(flat)["win_rate"] == "undefined: no trades"


def test_inline_charts_fit_the_dagster_ui_limit_and_are_valid_svg():
    from urllib.parse import unquote
    from xml.etree import ElementTree

    from smc_assets.common import INLINE_MARKDOWN_LIMIT, inline_chart

    rng = np.random.default_rng(0)
    curve = 100_000 + np.cumsum(rng.normal(0, 50, 20_000))
    text = inline_chart("equity", [(np.arange(20_000), curve, "#1f77b4"), (np.arange(20_000), curve[::-1], "#999")])
    assert len(text) < INLINE_MARKDOWN_LIMIT and text.startswith("equity\n\n![chart](data:image/svg+xml,")
    svg = ElementTree.fromstring(unquote(text.split("data:image/svg+xml,", 1)[1][:-1]))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert [line.get("stroke") for line in lines] == ["#1f77b4", "#999"]
    points = np.array(lines[0].get("points").split(","), dtype=float).reshape(-1, 2)
    assert len(points) >= 25 and points[:, 0].min() == 0 and points[:, 0].max() == 300
    assert points[:, 1].min() >= 0 and points[:, 1].max() <= 90  # inside the drawing box
    square = inline_chart("reliability", [(np.linspace(0.4, 0.9, 15), np.linspace(0.3, 0.95, 15), "#999")],
                          square=True)
    assert "M0,100L100,0" in unquote(square) and len(square) < INLINE_MARKDOWN_LIMIT


def test_metrics_follow_the_stated_conventions():
    path = 5000 + np.round(np.cumsum(np.random.default_rng(5).normal(0.2, 0.5, 300)) * 4) / 4
    bars = _bars(path, sessions=np.repeat(np.arange(3), 100), spread=0.25)
    calls = np.tile(LONG_CALL, (300, 1))
    result = backtest(bars, calls, PolicyConfig(contracts=1, stop_atr=50, target_atr=50),
                      InstrumentSpec(commission=0, slippage_ticks=0))
    metrics = result.metrics()
    daily = result.daily_returns().to_numpy()
    assert metrics["days"] == 3 and metrics["trades"] == 3
    assert metrics["sharpe"] == pytest.approx(daily.mean() / daily.std(ddof=1) * math.sqrt(252))
    assert metrics["sortino"] == pytest.approx(daily.mean() / np.sqrt(np.mean(np.minimum(daily, 0) ** 2))
                                               * math.sqrt(252)) if (daily < 0).any() else True
    equity = 100_000 + np.cumsum(result.pnl)
    peak = np.maximum.accumulate(np.concatenate([[100_000], equity]))[1:]
    assert metrics["max_drawdown_pct"] == pytest.approx(100 * np.max(1 - equity / peak))
    assert metrics["total_return"] == pytest.approx(result.pnl.sum() / 100_000)
    assert 0.9 < metrics["exposure"] < 1.0


# --- statistics ------------------------------------------------------------------------

def test_psr_matches_its_closed_form_and_dsr_deflates_by_the_number_of_trials():
    # PSR for SR = 0.1 over 1000 normal returns (skew 0, kurtosis 3) against 0
    expected = stats.norm.cdf(0.1 * math.sqrt(999) / math.sqrt(1 + 0.5 * 0.01))
    assert probabilistic_sharpe_ratio(0.1, 0.0, 1000, 0.0, 3.0) == pytest.approx(expected)
    # negative skew and fat tails widen the estimate's error: lower PSR for the same SR
    assert probabilistic_sharpe_ratio(0.1, 0.0, 1000, -3.0, 10.0) < expected
    returns = np.random.default_rng(1).normal(0.05, 1.0, 2000)
    one = deflated_sharpe_ratio(returns, n_trials=1, sr_variance=0.0)
    assert one["sr0"] == 0 and one["dsr"] == pytest.approx(
        probabilistic_sharpe_ratio(sharpe(returns), 0.0, 2000, one["skew"], one["kurtosis"]))
    many = deflated_sharpe_ratio(returns, n_trials=100, sr_variance=0.05 ** 2)
    assert many["dsr"] < one["dsr"]


@pytest.mark.parametrize("n_trials", [10, 100, 1000])
def test_expected_max_sharpe_approximates_the_maximum_of_independent_trials(n_trials):
    simulated = np.random.default_rng(2).standard_normal((20_000, n_trials)).max(axis=1).mean()
    assert expected_max_sharpe(n_trials, 1.0) == pytest.approx(simulated, rel=0.05)
    assert expected_max_sharpe(n_trials, 4.0) == pytest.approx(2 * expected_max_sharpe(n_trials, 1.0))


def test_pbo_is_zero_for_a_dominant_candidate_half_for_noise_and_high_when_in_sample_misleads():
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.01, (1600, 10))
    dominant = noise.copy()
    dominant[:, 4] += 0.02
    assert probability_of_backtest_overfitting(dominant).pbo == 0.0
    # for pure noise the in-sample winner is a coin flip out of sample: PBO is 1/2 on average
    noise_pbos = [probability_of_backtest_overfitting(rng.normal(0, 0.01, (800, 10))).pbo for _ in range(30)]
    assert 0.4 < np.mean(noise_pbos) < 0.6
    # every candidate has the same overall mean, so being best in sample means being worst out of sample
    block_means = rng.normal(0, 0.01, (16, 10))
    block_means -= block_means.mean(axis=0)
    misleading = np.repeat(block_means, 100, axis=0) + rng.normal(0, 0.001, (1600, 10))
    result = probability_of_backtest_overfitting(misleading)
    assert result.pbo > 0.9 and result.n_combinations == 12870
    with pytest.raises(ValueError, match="N >= 2"):
        probability_of_backtest_overfitting(noise[:, :1])


def test_spa_rejects_for_a_clearly_superior_model_and_not_for_an_equal_one():
    rng = np.random.default_rng(4)
    benchmark = rng.normal(0, 1, 2000)
    better = benchmark - 0.3 + rng.normal(0, 0.5, 2000)
    assert spa_pvalue(benchmark, better[:, None]) < 0.05
    equal = rng.normal(0, 1, 2000)
    assert spa_pvalue(benchmark, equal[:, None]) > 0.2
