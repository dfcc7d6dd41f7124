"""Features: causal by replay, identical in batch and serving, clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smc_core.calendar import CME_EQUITY
from smc_core.features import CATALOGUE, FeatureInputError, compute_features, time_features
from smc_core.features.technical import cutler_rsi, true_range, window_mean
from smc_core.synthetic import SyntheticConfig, generate_bars

LOOKBACK = CATALOGUE.max_lookback


def random_bars(seed: int, n: int) -> pd.DataFrame:
    """A random-walk bar series with realistic tick rounding and occasional flat bars."""
    rng = np.random.default_rng(seed)
    close = 4800 + np.cumsum(np.round(rng.normal(0, 1.5, n) * 4) / 4)
    open_ = np.concatenate(([close[0]], close[:-1])) + np.round(rng.normal(0, 0.3, n) * 4) / 4
    high = np.maximum(open_, close) + np.round(np.abs(rng.normal(0, 1, n)) * 4) / 4
    low = np.minimum(open_, close) - np.round(np.abs(rng.normal(0, 1, n)) * 4) / 4
    volume = rng.integers(1, 500, n).astype(float)
    ts = pd.date_range("2024-03-04 14:31", periods=n, freq="min", tz="UTC")
    return pd.DataFrame({"ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume,
                         "delta": np.round(volume * rng.uniform(-1, 1, n))})


def test_catalogue_has_the_required_breadth_and_context():
    assert len(CATALOGUE.names) >= 40
    assert len(set(CATALOGUE.names)) == len(CATALOGUE.names)
    assert CATALOGUE.required_context(20) <= 50
    for name in ("atr", "delta", "ext_dir", "int_dir", "has_fvg_bull", "has_fvg_bear", "has_ob_bull", "has_ob_bear",
                 "fvg_quality_score" if "fvg_quality_score" in CATALOGUE.names else "fvg_retest_type",
                 "fvg_penetration_ratio", "mgann_leg_index", "pb_wave_strength_ok", "confluence_score"):
        assert name in CATALOGUE.names
    assert len(CATALOGUE.version) == 16


def test_bar_by_bar_replay_never_rewrites_a_reading():
    bars = random_bars(1, 160)
    batch = compute_features(bars).to_numpy()
    readings: dict[int, np.ndarray] = {}
    rewritten = 0
    for k in range(LOOKBACK, len(bars) + 1):
        live = compute_features(bars.iloc[:k]).to_numpy()
        for t in range(k):
            if t in readings and not np.array_equal(readings[t], live[t], equal_nan=True):
                rewritten += 1
            readings[t] = live[t]
        assert np.array_equal(live[-1], batch[k - 1], equal_nan=True)
    assert rewritten == 0


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(LOOKBACK + 5, 220), cuts=st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_prefixes_agree_with_the_full_series(seed, n, cuts):
    bars = random_bars(seed, n)
    full = compute_features(bars).to_numpy()
    for fraction in cuts:
        k = LOOKBACK + int(fraction * (n - LOOKBACK))
        prefix = compute_features(bars.iloc[:k]).to_numpy()
        assert np.array_equal(prefix, full[:k], equal_nan=True)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), offset=st.integers(0, 120))
def test_a_lookback_window_alone_reproduces_the_batch_row(seed, offset):
    bars = random_bars(seed, 200)
    full = compute_features(bars).to_numpy()
    t = LOOKBACK - 1 + offset
    alone = compute_features(bars.iloc[t - LOOKBACK + 1: t + 1]).to_numpy()
    assert np.array_equal(alone[-1], full[t], equal_nan=True)


def test_every_feature_is_finite_after_warmup_on_realistic_bars():
    bars = generate_bars(SyntheticConfig(days=2, seed=4))
    frame = compute_features(bars)
    tail = frame.iloc[LOOKBACK - 1:]
    assert np.isfinite(tail.to_numpy()).all(), tail.columns[~np.isfinite(tail.to_numpy()).all(axis=0)].tolist()


def test_atr_and_rsi_match_pandas_definitions():
    bars = random_bars(7, 300)
    high, low, close = (bars[c].to_numpy() for c in ("high", "low", "close"))
    tr = pd.concat([bars["high"] - bars["low"], (bars["high"] - bars["close"].shift()).abs(),
                    (bars["low"] - bars["close"].shift()).abs()], axis=1).max(axis=1, skipna=False)
    np.testing.assert_allclose(window_mean(true_range(high, low, close), 14), tr.rolling(14).mean(), rtol=1e-12)
    change = bars["close"].diff()
    gains, losses = change.clip(lower=0).rolling(14).sum(), (-change.clip(upper=0)).rolling(14).sum()
    np.testing.assert_allclose(cutler_rsi(close, 14), 100 * gains / (gains + losses), rtol=1e-10)
    features = compute_features(bars)
    np.testing.assert_allclose(features["atr"], tr.rolling(14).mean(), rtol=1e-12)


def calendar_stamps(seed: int) -> pd.DatetimeIndex:
    """Random minute closes over several years plus every edge the encodings turn on: local
    midnight, session close/open, RTH open/close and both DST switches, to the microsecond."""
    rng = np.random.default_rng(seed)
    random = pd.to_datetime(rng.integers(pd.Timestamp("2019-01-01").value, pd.Timestamp("2027-01-01").value, 3000)
                            // 60_000_000_000 * 60_000_000_000, utc=True)
    local_edges = [f"{day} {clock}" for day in ("2024-03-08", "2024-03-10", "2024-03-11", "2024-11-01",
                                                  "2024-11-03", "2024-11-04", "2025-12-26")
                   for clock in ("00:00", "08:30", "15:00", "16:00", "17:00", "23:59:59.999999")]
    edges = pd.DatetimeIndex(local_edges).tz_localize("America/Chicago", ambiguous=True).tz_convert("UTC")
    near = edges.append([edges + pd.Timedelta(microseconds=1), edges - pd.Timedelta(microseconds=1)])
    return random.append(near).append(pd.DatetimeIndex(["2024-03-10 08:00", "2024-11-03 06:30"], tz="UTC")).sort_values()


@pytest.mark.parametrize("seed", [1, 2])
def test_calendar_encodings_match_their_pandas_definitions(seed):
    """The vectorised schedule lookups and wall-clock arithmetic equal plain pandas definitions
    over the exchange's own schedule (pandas_market_calendars: holidays, early closes) bit for bit."""
    import pandas_market_calendars as mcal

    ts = calendar_stamps(seed)
    schedule = mcal.get_calendar("CME Globex Equity").schedule("2018-12-01", "2027-01-31")
    sessions = pd.DataFrame({"day": schedule.index, "open": schedule["market_open"],
                             "close": schedule["market_close"]}).reset_index(drop=True)
    # a bar belongs to the first session whose close is at or after it
    owner = pd.merge_asof(pd.DataFrame({"ts": ts}), sessions.assign(ts=sessions["close"]), on="ts",
                          direction="forward")
    trading_day = owner["day"].to_numpy().astype("datetime64[D]")
    local = ts.tz_convert("America/Chicago").tz_localize(None)
    minutes_in_day = (local - pd.Timedelta(microseconds=1) - local.normalize()).total_seconds().to_numpy() / 60.0
    weekday = pd.DatetimeIndex(trading_day).weekday.to_numpy()
    in_session = np.asarray(ts > pd.DatetimeIndex(owner["open"]))
    rth = (minutes_in_day >= 8 * 60 + 30) & (minutes_in_day < 15 * 60) & in_session
    np.testing.assert_array_equal(CME_EQUITY.trading_day_of(ts), trading_day)
    np.testing.assert_array_equal(CME_EQUITY.in_session(ts), in_session)
    np.testing.assert_array_equal(CME_EQUITY.is_rth(ts), rth)
    assert not in_session.all() and in_session.mean() > 0.6  # halts, weekends and holidays are outside

    encoded = time_features(ts, CME_EQUITY)
    clock = ts.tz_convert("America/Chicago")
    angle = 2 * np.pi * (clock.hour * 60 + clock.minute + clock.second / 60.0).to_numpy(dtype="float64") / 1440.0
    day_angle = 2 * np.pi * weekday.astype("float64") / 5.0
    opens = pd.DatetimeIndex(owner["open"]).as_unit("ns").asi8.astype("float64")
    closes = pd.DatetimeIndex(owner["close"]).as_unit("ns").asi8.astype("float64")
    expected = {"tod_sin": np.sin(angle), "tod_cos": np.cos(angle), "dow_sin": np.sin(day_angle),
                "dow_cos": np.cos(day_angle), "is_rth": rth.astype("float64"),
                "session_progress": (ts.asi8.astype("float64") - opens) / (closes - opens)}
    for name, values in expected.items():
        np.testing.assert_array_equal(encoded[name], values, err_msg=name)


def test_delta_is_estimated_and_flagged_when_missing():
    bars = random_bars(3, 80).drop(columns="delta")
    frame = compute_features(bars)
    assert (frame["delta_is_estimate"] == 1).all()
    row = bars.iloc[50]
    expected = row.volume * (2 * (row.close - row.low) - (row.high - row.low)) / (row.high - row.low)
    assert frame["delta"].iloc[50] == pytest.approx(expected)


def test_too_few_bars_names_the_minimum():
    with pytest.raises(FeatureInputError, match=f"need at least {LOOKBACK}"):
        compute_features(random_bars(1, LOOKBACK - 1))


@pytest.mark.parametrize("column, value", [("close", np.nan), ("high", np.inf), ("volume", np.nan)])
def test_non_finite_input_is_rejected_with_its_index(column, value):
    bars = random_bars(2, 60)
    bars.loc[37, column] = value
    with pytest.raises(FeatureInputError, match=f"bar 37 .* non-finite {column}"):
        compute_features(bars)


def test_non_monotone_timestamps_are_rejected_with_their_index():
    bars = random_bars(2, 60)
    bars.loc[41, "ts"] = bars.loc[40, "ts"]
    with pytest.raises(FeatureInputError, match="bar 41 .* does not follow bar 40"):
        compute_features(bars)
