"""Triple-barrier labels: one hand-built price path per rule, then properties on random paths.

Unless a test says otherwise: ATR 1, entry close 100, H = 5, so the barriers are 101.5 / 98.5.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from smc_core.errors import ConfigError
from smc_core.labels import BARRIERS, LABELS, Horizon, label_counts, triple_barrier

START = pd.Timestamp("2024-03-05 14:31", tz="UTC")
H5 = Horizon(bars=5, up_atr=1.5, down_atr=1.5)
ENTRY = (100, 100, 100, 100)
FLAT = (100, 100.5, 99.5, 100)          # inside both barriers
UP_TOUCH = (100, 101.7, 99.8, 101.6)    # high reaches 101.5 only
DOWN_TOUCH = (100, 100.2, 98.3, 98.4)   # low reaches 98.5 only
LONG, SHORT, SKIP = 0, 1, 2


def make_bars(rows, sessions=1, atr=1.0) -> pd.DataFrame:
    """rows: (open, high, low, close) per 1-minute bar; row 0 is the entry bar."""
    frame = pd.DataFrame(rows, columns=["open", "high", "low", "close"], dtype=float)
    frame.insert(0, "ts", pd.date_range(START, periods=len(rows), freq="1min"))
    frame["atr"] = atr
    frame["session"] = sessions
    return frame


def first(rows, horizon=H5, **kwargs) -> pd.Series:
    """The label of the entry bar (row 0)."""
    bars = make_bars(rows, **kwargs)
    return triple_barrier(bars, horizon).iloc[0]


def ts(i: int) -> pd.Timestamp:
    return START + pd.Timedelta(minutes=i)


def test_upper_barrier_first_is_long_at_the_barrier_price():
    out = first([ENTRY, FLAT, FLAT, UP_TOUCH, DOWN_TOUCH, FLAT, FLAT])
    assert (out.label, out.barrier, out.t1) == (LONG, "up", ts(3))
    assert out.ret == pytest.approx(math.log(101.5 / 100), rel=1e-12)


def test_lower_barrier_first_is_short_at_the_barrier_price():
    out = first([ENTRY, FLAT, DOWN_TOUCH, UP_TOUCH, FLAT, FLAT, FLAT])
    assert (out.label, out.barrier, out.t1) == (SHORT, "down", ts(2))
    assert out.ret == pytest.approx(math.log(98.5 / 100), rel=1e-12)


def test_both_barriers_in_one_bar_is_skip_without_an_exit_price():
    out = first([ENTRY, FLAT, (100, 102, 98, 100), UP_TOUCH, FLAT, FLAT, FLAT])
    assert (out.label, out.barrier, out.t1) == (SKIP, "both_same_bar", ts(2))
    assert np.isnan(out.ret)


def test_no_touch_within_h_is_skip_at_the_time_barrier():
    rows = [ENTRY, FLAT, FLAT, FLAT, FLAT, (100, 100.5, 99.9, 100.3), UP_TOUCH, FLAT]  # touch after H ignored
    out = first(rows)
    assert (out.label, out.barrier, out.t1) == (SKIP, "time", ts(5))
    assert out.ret == pytest.approx(math.log(100.3 / 100), rel=1e-12)


@pytest.mark.parametrize("close_at_h, expected", [(100.6, LONG), (99.4, SHORT), (100.3, SKIP), (100.5, LONG)])
def test_min_move_decides_the_direction_at_the_time_barrier(close_at_h, expected):
    rows = [ENTRY, FLAT, FLAT, FLAT, FLAT, (100, 101, 99, close_at_h), FLAT]
    out = first(rows, horizon=Horizon(bars=5, min_move_atr=0.5))
    assert (out.label, out.barrier, out.t1) == (expected, "time", ts(5))
    assert out.ret == pytest.approx(math.log(close_at_h / 100), rel=1e-12)


def test_without_min_move_a_large_move_at_the_time_barrier_is_still_skip():
    out = first([ENTRY, FLAT, FLAT, FLAT, FLAT, (100, 101.4, 99, 101.4), FLAT])
    assert (out.label, out.barrier) == (SKIP, "time")


def test_session_end_before_h_is_skip_at_the_sessions_last_bar():
    rows = [ENTRY, FLAT, FLAT, (100, 100.4, 99.9, 100.2), UP_TOUCH, FLAT, FLAT]  # touch in the next session
    out = first(rows, sessions=[1, 1, 1, 1, 2, 2, 2])
    assert (out.label, out.barrier, out.t1) == (SKIP, "session_end", ts(3))
    assert out.ret == pytest.approx(math.log(100.2 / 100), rel=1e-12)


def test_date_session_ids_work_like_integers():
    sessions = [pd.Timestamp("2024-03-05").date()] * 4 + [pd.Timestamp("2024-03-06").date()] * 3
    out = first([ENTRY, FLAT, FLAT, FLAT, UP_TOUCH, FLAT, FLAT], sessions=sessions)
    assert (out.label, out.barrier, out.t1) == (SKIP, "session_end", ts(3))


def test_time_barrier_on_the_sessions_last_bar_counts_as_time():
    out = first([ENTRY, FLAT, FLAT, FLAT, FLAT, FLAT, UP_TOUCH], sessions=[1] * 6 + [2])
    assert (out.label, out.barrier, out.t1) == (SKIP, "time", ts(5))


def test_data_ending_before_the_outcome_is_unknown():
    out = first([ENTRY, FLAT, FLAT, FLAT])
    assert (out.label, out.barrier) == (-1, "unknown")
    assert pd.isna(out.t1) and np.isnan(out.ret)


def test_a_touch_before_the_data_ends_is_known():
    out = first([ENTRY, FLAT, UP_TOUCH])
    assert (out.label, out.barrier, out.t1) == (LONG, "up", ts(2))


def test_nan_atr_is_unknown_even_when_a_barrier_would_be_touched():
    bars = make_bars([ENTRY, UP_TOUCH, FLAT, FLAT, FLAT, FLAT, FLAT], atr=[np.nan] + [1.0] * 6)
    out = triple_barrier(bars, H5).iloc[0]
    assert (out.label, out.barrier) == (-1, "unknown")
    assert pd.isna(out.t1) and np.isnan(out.ret)


@pytest.mark.parametrize("gap_bar, expected, barrier, exit_price", [
    ((102.3, 102.5, 102.0, 102.2), LONG, "up", 102.3),
    ((97.9, 98.1, 97.5, 97.6), SHORT, "down", 97.9),
    ((102.3, 102.4, 98.0, 98.2), LONG, "up", 102.3),  # opened beyond: that barrier came first
])
def test_gap_open_beyond_a_barrier_exits_at_the_open(gap_bar, expected, barrier, exit_price):
    out = first([ENTRY, FLAT, gap_bar, FLAT, FLAT, FLAT, FLAT])
    assert (out.label, out.barrier, out.t1) == (expected, barrier, ts(2))
    assert out.ret == pytest.approx(math.log(exit_price / 100), rel=1e-12)


def test_entry_on_the_sessions_last_bar_is_skip_with_t1_at_entry():
    bars = make_bars([FLAT, ENTRY, UP_TOUCH, FLAT], sessions=[1, 1, 2, 2])
    out = triple_barrier(bars, H5).iloc[1]
    assert (out.label, out.barrier, out.t1, out.ret) == (SKIP, "session_end", ts(1), 0.0)


def test_entry_on_the_last_row_of_the_frame_is_unknown():
    out = triple_barrier(make_bars([FLAT, FLAT, ENTRY], sessions=[1, 2, 2]), H5).iloc[-1]
    assert (out.label, out.barrier) == (-1, "unknown")


def test_output_keeps_the_index_and_the_documented_dtypes():
    bars = make_bars([ENTRY, FLAT, UP_TOUCH, FLAT]).set_index(pd.Index([10, 11, 12, 13]))
    out = triple_barrier(bars, H5)
    assert out.index.equals(bars.index)
    assert list(out.columns) == ["label", "t1", "ret", "barrier"]
    assert out["label"].dtype == np.int8
    assert out["t1"].dtype == "datetime64[ns, UTC]"
    assert out["ret"].dtype == np.float64
    assert list(out["barrier"].cat.categories) == list(BARRIERS)


def test_bad_inputs_are_rejected():
    bars = make_bars([ENTRY, FLAT, FLAT])
    with pytest.raises(ConfigError, match="atr"):
        triple_barrier(bars.drop(columns="atr"), H5)
    with pytest.raises(ConfigError, match="increasing"):
        triple_barrier(bars.iloc[::-1], H5)
    with pytest.raises(ConfigError, match="contiguous"):
        triple_barrier(bars.assign(session=[1, 2, 1]), H5)
    with pytest.raises(ConfigError, match="timezone"):
        triple_barrier(bars.assign(ts=bars["ts"].dt.tz_localize(None)), H5)


def test_horizon_name_and_validation():
    assert Horizon().name == "h15_u1.5_d1.5"
    assert Horizon(bars=15, up_atr=2, down_atr=1).name == "h15_u2.0_d1.0"
    assert Horizon(min_move_atr=0.25).name == "h15_u1.5_d1.5_m0.25"
    for bad in ({"bars": 0}, {"up_atr": 0}, {"down_atr": -1}, {"min_move_atr": float("nan")}):
        with pytest.raises(ConfigError):
            Horizon(**bad)


def test_label_counts():
    rows = [ENTRY, UP_TOUCH, (101.6, 101.8, 99.9, 100), FLAT, FLAT]
    counts = label_counts(triple_barrier(make_bars(rows, sessions=[1, 1, 1, 1, 2]), H5))
    # row 0 long, row 1 short (its lower barrier is 100.1), rows 2-3 session end, row 4 runs into the end
    assert counts == {"long": 1, "short": 1, "skip": 2, "unknown": 1}
    assert set(counts) == {*LABELS, "unknown"}


# --- properties on random paths -------------------------------------------------------


def random_bars(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """A random walk with wicks, occasional in-session gaps, random session lengths and NaN ATRs."""
    close = 100 + np.cumsum(rng.normal(0, 0.5, n))
    open_ = np.r_[100.0, close[:-1]] + np.where(rng.random(n) < 0.05, rng.normal(0, 2, n), 0.0)
    high = np.maximum(open_, close) + rng.exponential(0.3, n)
    low = np.minimum(open_, close) - rng.exponential(0.3, n)
    atr = rng.uniform(0.5, 1.5, n)
    atr[rng.random(n) < 0.05] = np.nan
    sessions = np.repeat(np.arange(n), rng.integers(1, 60, n))[:n]
    return pd.DataFrame({"ts": pd.date_range(START, periods=n, freq="1min"), "open": open_, "high": high,
                         "low": low, "close": close, "atr": atr, "session": sessions})


def exit_rows(out: pd.DataFrame, bars: pd.DataFrame) -> np.ndarray:
    """Row of t1 for each label, -1 when unknown (t1 is always some bar's close time)."""
    return pd.DatetimeIndex(bars["ts"]).get_indexer(pd.DatetimeIndex(out["t1"]))


@pytest.mark.parametrize("seed", range(8))
def test_random_paths_exit_inside_horizon_and_session(seed):
    rng = np.random.default_rng(seed)
    bars = random_bars(rng, 400)
    horizon = Horizon(bars=int(rng.integers(1, 40)), up_atr=float(rng.uniform(0.5, 3)),
                      down_atr=float(rng.uniform(0.5, 3)), min_move_atr=float(rng.choice([0.0, 0.5])))
    out = triple_barrier(bars, horizon)
    known = out["label"].to_numpy() >= 0
    assert np.array_equal(known, out["barrier"].to_numpy() != "unknown")
    assert np.array_equal(known, out["t1"].notna().to_numpy())
    assert np.array_equal(known & (out["barrier"] != "both_same_bar").to_numpy(), out["ret"].notna().to_numpy())
    rows, entry = exit_rows(out, bars)[known], np.flatnonzero(known)
    assert (out["t1"][known] >= bars["ts"][known]).all()
    assert np.all((rows >= entry) & (rows - entry <= horizon.bars))
    assert np.array_equal(bars["session"].to_numpy()[rows], bars["session"].to_numpy()[entry])
    assert known.sum() > 300 and len(set(out["barrier"][known])) >= 3  # the paths exercise several rules


@pytest.mark.parametrize("seed", range(8))
def test_labels_never_depend_on_bars_after_t1(seed):
    rng = np.random.default_rng(100 + seed)
    bars = random_bars(rng, 400)
    horizon = Horizon(bars=int(rng.integers(1, 40)), min_move_atr=float(rng.choice([0.0, 0.5])))
    out = triple_barrier(bars, horizon)
    rows = exit_rows(out, bars)
    prices = ["open", "high", "low", "close"]
    for cut in rng.integers(50, 390, 5):
        decided = (rows >= 0) & (rows <= cut)
        # New prices after the cut leave every label decided by then unchanged.
        changed = bars.copy()
        changed.loc[cut + 1:, prices] = random_bars(rng, len(bars))[prices].iloc[cut + 1:].to_numpy() + 5
        pd.testing.assert_frame_equal(triple_barrier(changed, horizon)[decided], out[decided])
        # Dropping the bars after the cut never turns a known label into a different known label;
        # only a session end seen on the cut row becomes unknown (the session may go on).
        truncated = triple_barrier(bars.iloc[:cut + 1], horizon)
        head = out.iloc[:cut + 1]
        same = (truncated == head) | (truncated.isna() & head.isna())
        differs = ~same.all(axis=1).to_numpy()
        assert np.all(truncated["label"].to_numpy()[differs] == -1)
        session_end_on_cut = (head["barrier"] == "session_end").to_numpy() & (rows[:cut + 1] == cut)
        assert not np.any(differs & ~session_end_on_cut & (rows[:cut + 1] <= cut))


def test_a_complete_last_session_ends_at_its_close_instead_of_unknown():
    n = 6
    bars = pd.DataFrame({
        "ts": pd.date_range("2024-03-05 21:55", periods=n, freq="min", tz="UTC"),
        "open": [100.0] * n, "high": [100.2] * n, "low": [99.8] * n, "close": [100.0] * n,
        "atr": [1.0] * n, "session": [1] * n})
    open_ended = triple_barrier(bars, Horizon(bars=30))
    assert (open_ended["label"] == -1).all()
    finished = triple_barrier(bars, Horizon(bars=30), last_session_complete=True)
    assert list(finished["label"]) == [2] * n
    assert list(finished["barrier"]) == ["session_end"] * n
    assert (finished["t1"] == bars["ts"].iloc[-1]).all()
