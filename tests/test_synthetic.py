"""Synthetic bars: calendar grid, realism, determinism, the planted SMC edge and the writers.

Every property is measured on generated bars, so a regression in the generator fails here.
"""

from __future__ import annotations

import re
from datetime import date, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smc_core.calendar import CME_EQUITY, SessionCalendar
from smc_core.errors import ConfigError
from smc_core.synthetic import (
    Instrument,
    SyntheticConfig,
    generate_bars,
    write_ninjatrader,
    write_synthetic,
)

DAYS = 20
SEED = 11
TICK = 0.25
BARS_PER_YEAR = 252 * 1380


@pytest.fixture(scope="module")
def none_bars() -> pd.DataFrame:
    return generate_bars(SyntheticConfig(days=DAYS, seed=SEED, edge="none"))


@pytest.fixture(scope="module")
def smc_bars() -> pd.DataFrame:
    return generate_bars(SyntheticConfig(days=DAYS, seed=SEED, edge="smc", edge_strength=0.7))


# --- helpers ----------------------------------------------------------------------------

def session_starts(bars: pd.DataFrame) -> np.ndarray:
    """True on the first bar of each trading day."""
    day = CME_EQUITY.trading_day_of(bars["ts"])
    return np.r_[True, day[1:] != day[:-1]]


def intraday_log_returns(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Close-to-close log returns inside sessions, and the index of the bar each ends at."""
    close = bars["close"].to_numpy()
    returns = np.diff(np.log(close))
    keep = ~session_starts(bars)[1:]
    return returns[keep], np.flatnonzero(keep) + 1


def autocorrelation(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).mean() / x.var())


def find_setups(bars: pd.DataFrame) -> list[tuple[int, int]]:
    """Re-derive the planted SMC setups from the bars alone, causally: (bar, +1 bull / -1 bear).

    FVG: low[t] > high[t-2] (bull) or high[t] < low[t-2] (bear); the newest replaces an
    older one; fresh for 27 bars (inside the 30-bar SMC window); filled once price trades
    through its far side. Setup: price retests a fresh unfilled FVG with structure (ret_20) in
    the same direction; one setup per FVG; none during the 15 bars after a setup.
    """
    high, low, close = (bars[name].to_numpy() for name in ("high", "low", "close"))
    setups, bull, bear, blocked_until = [], None, None, -1
    for t in range(len(bars)):
        if t > blocked_until and t >= 20:
            side = 0
            if bull and t - bull[2] <= 27 and bull[0] < low[t] <= bull[1] and close[t] > close[t - 20]:
                side, bull = 1, None
            elif bear and t - bear[2] <= 27 and bear[0] <= high[t] < bear[1] and close[t] < close[t - 20]:
                side, bear = -1, None
            if side:
                setups.append((t, side))
                blocked_until = t + 15
        if bull and low[t] <= bull[0]:
            bull = None
        if bear and high[t] >= bear[1]:
            bear = None
        if t >= 2:
            if low[t] > high[t - 2]:
                bull = (high[t - 2], low[t], t)
            if high[t] < low[t - 2]:
                bear = (high[t], low[t - 2], t)
    return setups


def directional_hit_rate(bars: pd.DataFrame, setups: list[tuple[int, int]]) -> float:
    """Share of setups whose next-15-bar close-to-close move has the setup's sign (flat excluded)."""
    close = bars["close"].to_numpy()
    signed = np.array([np.sign(close[t + 15] - close[t]) * side for t, side in setups if t + 15 < len(close)])
    return float(np.mean(signed[signed != 0] > 0))


# --- shape and calendar -----------------------------------------------------------------

def test_columns_dtypes_and_attrs(none_bars):
    assert list(none_bars.columns) == ["ts", "open", "high", "low", "close", "volume", "delta"]
    assert str(none_bars["ts"].dtype) == "datetime64[ns, UTC]"
    for name in ("open", "high", "low", "close", "volume", "delta"):
        assert none_bars[name].dtype == np.float64, name
    assert none_bars["ts"].is_monotonic_increasing and none_bars["ts"].is_unique
    assert none_bars.attrs["symbol"] == "ES"
    assert none_bars.attrs["timeframe"] == "1m"
    assert none_bars.attrs["edge"] == "none"
    assert isinstance(none_bars.attrs["setups"], int)


def test_without_delta_drops_only_the_delta_column(none_bars):
    bars = generate_bars(SyntheticConfig(days=DAYS, seed=SEED, edge="none", with_delta=False))
    assert "delta" not in bars.columns
    pd.testing.assert_frame_equal(bars, none_bars.drop(columns="delta"))


def test_every_bar_lies_on_the_calendar_grid_and_days_are_complete(none_bars):
    days = CME_EQUITY.trading_days(date(2024, 1, 2), date(2024, 2, 29))[:DAYS]
    expected = [CME_EQUITY.expected_closes(day, timedelta(minutes=1)) for day in days]
    # 17:00 to 16:00 Chicago is 1,380 minutes; Martin Luther King Day (2024-01-15) closes early at
    # 12:00 (CME holiday calendar): 17:00 Sunday to 12:00 Monday is 1,140
    assert {day: len(closes) for day, closes in zip(days, expected) if len(closes) != 1380} == {date(2024, 1, 15): 1140}
    assert np.array_equal(none_bars["ts"].to_numpy(), np.concatenate([c.to_numpy() for c in expected]))
    assert CME_EQUITY.in_session(none_bars["ts"]).all()


def test_dst_switch_days_follow_the_calendar():
    for start in (date(2024, 3, 6), date(2024, 10, 30)):  # spring forward, fall back
        bars = generate_bars(SyntheticConfig(days=6, start=start))
        day_of_bar = CME_EQUITY.trading_day_of(bars["ts"])
        days = CME_EQUITY.trading_days(start, start + timedelta(days=14))[:6]
        for day in days:
            expected = CME_EQUITY.expected_closes(day, timedelta(minutes=1))
            got = bars["ts"][day_of_bar == np.datetime64(day)]
            assert np.array_equal(got.to_numpy(), expected.to_numpy()), day
        first_close_hours = {ts.hour for ts in bars["ts"][session_starts(bars)]}
        assert first_close_hours == {22, 23}  # 17:01 Chicago is 23:01 UTC in winter, 22:01 in summer


def test_holidays_early_closes_and_start_are_respected():
    """The exchange's calendar: NYSE is closed on Martin Luther King Day (2024-01-15); CME Globex
    equity futures trade it until 12:00 Chicago."""
    nyse = SessionCalendar("NYSE", time(9, 30), time(16, 0))
    bars = generate_bars(SyntheticConfig(days=4, start=date(2024, 1, 12), calendar=nyse))
    days = sorted({str(day) for day in nyse.trading_day_of(bars["ts"])})
    assert days == ["2024-01-12", "2024-01-16", "2024-01-17", "2024-01-18"]
    cme = generate_bars(SyntheticConfig(days=2, start=date(2024, 1, 15)))
    monday = cme["ts"][CME_EQUITY.trading_day_of(cme["ts"]) == np.datetime64("2024-01-15")]
    assert str(monday.iloc[-1]) == "2024-01-15 18:00:00+00:00" and len(monday) == 19 * 60


def test_other_timeframes_follow_the_grid():
    bars = generate_bars(SyntheticConfig(days=3, timeframe=timedelta(minutes=5)))
    assert bars.attrs["timeframe"] == "5m"
    assert len(bars) == 3 * 276
    minutes = bars["ts"].dt.minute.to_numpy()
    assert (minutes % 5 == 0).all()


# --- prices -----------------------------------------------------------------------------

def test_prices_are_on_the_tick_grid_and_ohlc_consistent(smc_bars):
    prices = smc_bars[["open", "high", "low", "close"]].to_numpy()
    assert np.isclose(prices / TICK, np.round(prices / TICK), rtol=0, atol=1e-9).all()
    o, h, l, c = prices.T
    assert (h >= np.maximum(o, c)).all()
    assert (l <= np.minimum(o, c)).all()
    assert (h > l).mean() > 0.9


def test_other_tick_sizes_are_respected():
    instrument = Instrument(symbol="ZN", tick_size=1 / 64, tick_value=15.625, start_price=110.0)
    bars = generate_bars(SyntheticConfig(days=2, instrument=instrument))
    prices = bars[["open", "high", "low", "close"]].to_numpy()
    assert np.isclose(prices * 64, np.round(prices * 64), rtol=0, atol=1e-9).all()
    assert bars.attrs["symbol"] == "ZN"


def test_bars_are_continuous_within_a_session(none_bars):
    opens, closes = none_bars["open"].to_numpy(), none_bars["close"].to_numpy()
    inside = ~session_starts(none_bars)[1:]
    jump_ticks = np.abs(opens[1:] - closes[:-1])[inside] / TICK
    assert (jump_ticks == 0).mean() > 0.8
    assert jump_ticks.max() <= 1  # at most the first trade one tick away


def test_sessions_open_with_a_random_gap():
    bars = generate_bars(SyntheticConfig(days=60, seed=SEED))
    starts = np.flatnonzero(session_starts(bars))[1:]
    gap_ticks = (bars["open"].to_numpy()[starts] - bars["close"].to_numpy()[starts - 1]) / TICK
    assert (gap_ticks != 0).mean() > 0.6
    assert (gap_ticks > 0).any() and (gap_ticks < 0).any()
    assert np.abs(gap_ticks).max() >= 4


def test_same_config_same_bars_other_seed_other_bars(none_bars):
    again = generate_bars(SyntheticConfig(days=DAYS, seed=SEED, edge="none"))
    pd.testing.assert_frame_equal(again, none_bars)
    assert again.attrs == none_bars.attrs
    other = generate_bars(SyntheticConfig(days=DAYS, seed=SEED + 1, edge="none"))
    assert not np.array_equal(other["close"].to_numpy(), none_bars["close"].to_numpy())
    assert not np.array_equal(other["volume"].to_numpy(), none_bars["volume"].to_numpy())


def test_more_days_extend_fewer_days(none_bars):
    shorter = generate_bars(SyntheticConfig(days=5, seed=SEED, edge="none"))
    pd.testing.assert_frame_equal(shorter, none_bars.iloc[: len(shorter)])


# --- statistics -------------------------------------------------------------------------

def test_volatility_clusters_but_returns_do_not_trend(none_bars):
    returns, ends = intraday_log_returns(none_bars)
    # Divide out the clock (mean |return| per minute of day) so clustering is not just seasonality.
    local = none_bars["ts"].iloc[ends].dt.tz_convert("America/Chicago")
    minute_of_day = (local.dt.hour * 60 + local.dt.minute).to_numpy()
    seasonal = pd.Series(np.abs(returns)).groupby(minute_of_day).transform("mean").to_numpy()
    deseasonalised = np.abs(returns) / seasonal
    for lag in range(1, 11):
        assert autocorrelation(np.abs(returns), lag) > 0.05, lag
        assert autocorrelation(deseasonalised, lag) > 0.05, lag
        assert abs(autocorrelation(returns, lag)) < 0.08, lag
    assert abs(np.mean([autocorrelation(returns, lag) for lag in range(1, 11)])) < 0.03


def test_volume_and_volatility_follow_the_session_clock(none_bars):
    rth = CME_EQUITY.is_rth(none_bars["ts"])
    volume = none_bars["volume"].to_numpy()
    assert volume[rth].mean() > 3 * volume[~rth].mean()

    returns, ends = intraday_log_returns(none_bars)
    assert np.abs(returns[rth[ends]]).mean() > 1.5 * np.abs(returns[~rth[ends]]).mean()

    local = none_bars["ts"].dt.tz_convert("America/Chicago")
    minute = (local.dt.hour * 60 + local.dt.minute).to_numpy()
    opening = (minute > 8 * 60 + 30) & (minute <= 9 * 60)
    midday = (minute > 11 * 60) & (minute <= 13 * 60)
    closing = (minute > 14 * 60 + 30) & (minute <= 15 * 60)
    assert volume[opening].mean() > 1.5 * volume[midday].mean()
    assert volume[closing].mean() > 1.2 * volume[midday].mean()
    abs_return = np.zeros(len(none_bars))
    abs_return[ends] = np.abs(returns)
    assert abs_return[opening].mean() > 1.2 * abs_return[midday].mean()


def test_volume_and_delta_are_whole_signed_and_follow_the_bar(none_bars):
    volume, delta = none_bars["volume"].to_numpy(), none_bars["delta"].to_numpy()
    assert (volume >= 1).all() and (volume == np.round(volume)).all()
    assert (delta == np.round(delta)).all()
    assert (np.abs(delta) <= volume).all()
    assert (delta > 0).mean() > 0.3 and (delta < 0).mean() > 0.3
    body = (none_bars["close"] - none_bars["open"]).to_numpy()
    assert np.corrcoef(delta, body)[0, 1] > 0.3


def test_realised_volatility_matches_annual_vol(none_bars):
    returns, _ = intraday_log_returns(none_bars)
    realised = returns.std() * np.sqrt(BARS_PER_YEAR)
    assert 0.08 < realised < 0.32

    doubled = generate_bars(SyntheticConfig(days=DAYS, seed=SEED, edge="none", annual_vol=0.32))
    returns, _ = intraday_log_returns(doubled)
    realised_doubled = returns.std() * np.sqrt(BARS_PER_YEAR)
    assert 0.16 < realised_doubled < 0.64
    assert 1.6 < realised_doubled / realised < 2.4


# --- the planted edge -------------------------------------------------------------------

def test_planted_setups_can_be_recomputed_from_the_bars(none_bars, smc_bars):
    for bars in (none_bars, smc_bars):
        setups = find_setups(bars)
        assert len(setups) == bars.attrs["setups"]
        assert 0.01 <= len(setups) / len(bars) <= 0.04
        bullish = sum(side > 0 for _, side in setups) / len(setups)
        assert 0.3 < bullish < 0.7


def test_smc_edge_is_learnable_and_none_is_not(none_bars, smc_bars):
    assert directional_hit_rate(smc_bars, find_setups(smc_bars)) >= 0.6
    assert 0.4 <= directional_hit_rate(none_bars, find_setups(none_bars)) <= 0.6


def test_a_reversed_edge_resolves_the_same_setups_the_other_way():
    reversed_bars = generate_bars(SyntheticConfig(days=DAYS, seed=SEED, edge="smc_reversed", edge_strength=0.7))
    assert directional_hit_rate(reversed_bars, find_setups(reversed_bars)) <= 0.4


def test_edge_none_and_smc_share_their_marginals(none_bars, smc_bars):
    """Same code path: volume does not depend on the path at all; setups and vol are alike."""
    pd.testing.assert_series_equal(none_bars["volume"], smc_bars["volume"])
    assert abs(smc_bars.attrs["setups"] / none_bars.attrs["setups"] - 1) < 0.2
    vol_none = intraday_log_returns(none_bars)[0].std()
    vol_smc = intraday_log_returns(smc_bars)[0].std()
    assert abs(vol_smc / vol_none - 1) < 0.2


def test_edge_strength_one_almost_always_wins():
    bars = generate_bars(SyntheticConfig(days=10, seed=SEED, edge="smc", edge_strength=1.0))
    assert directional_hit_rate(bars, find_setups(bars)) > 0.85


@pytest.mark.parametrize("change", [
    {"edge": "magic"}, {"days": 0}, {"edge_strength": 1.5}, {"annual_vol": 0.0},
    {"timeframe": timedelta(0)}, {"instrument": Instrument(tick_size=0.0)},
])
def test_invalid_configs_are_rejected(change):
    with pytest.raises(ConfigError):
        generate_bars(SyntheticConfig(**change))


# --- writers ----------------------------------------------------------------------------

NINJATRADER_LINE = re.compile(r"^\d{8} \d{6}(;\d+(\.\d*[1-9])?){4};\d+$")


def read_ninjatrader(path: Path, tz: str = "America/Chicago") -> pd.DataFrame:
    frame = pd.read_csv(path, sep=";", header=None, names=["ts", "open", "high", "low", "close", "volume"],
                        dtype={"ts": str})
    frame["ts"] = pd.to_datetime(frame["ts"], format="%Y%m%d %H%M%S").dt.tz_localize(tz).dt.tz_convert("UTC")
    return frame


def test_write_ninjatrader_round_trips(none_bars, tmp_path):
    path = write_ninjatrader(none_bars, tmp_path / "ES.Last.txt")
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode().splitlines()
    assert len(lines) == len(none_bars)
    assert all(NINJATRADER_LINE.match(line) for line in lines)
    assert lines[0].startswith("20240101 170100;")  # first close of trading day 2024-01-02, Chicago time

    back = read_ninjatrader(path)
    assert np.array_equal(back["ts"].to_numpy(), none_bars["ts"].to_numpy())
    for name in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(back[name].to_numpy(dtype=float), none_bars[name].to_numpy()), name


def test_write_ninjatrader_uses_minimal_decimals_and_the_given_zone(tmp_path):
    bars = pd.DataFrame({
        "ts": pd.to_datetime(["2024-01-02T14:31:00Z", "2024-07-02T13:31:00Z"]),
        "open": [4800.25, 4800.0], "high": [4800.5, 4801.0],
        "low": [4800.0, 4799.75], "close": [4800.25, 4800.5], "volume": [12.0, 3.0],
    })
    expected = ["20240102 083100;4800.25;4800.5;4800;4800.25;12",
                "20240702 083100;4800;4801;4799.75;4800.5;3"]
    assert write_ninjatrader(bars, tmp_path / "a.txt").read_text().splitlines() == expected
    bars.attrs["tick_size"] = 0.25
    assert write_ninjatrader(bars, tmp_path / "b.txt").read_text().splitlines() == expected
    utc = write_ninjatrader(bars, tmp_path / "c.txt", tz="UTC").read_text().splitlines()
    assert [line[:15] for line in utc] == ["20240102 143100", "20240702 133100"]

    thirty_seconds = bars.assign(open=[110.03125, 110.5], high=[110.5, 110.5], low=[110.0, 110.0],
                                 close=[110.015625, 110.0])
    thirty_seconds.attrs["tick_size"] = 1 / 64
    lines = write_ninjatrader(thirty_seconds, tmp_path / "d.txt").read_text().splitlines()
    assert lines[0] == "20240102 083100;110.03125;110.5;110;110.015625;12"


def test_write_ninjatrader_rejects_naive_timestamps(tmp_path):
    bars = pd.DataFrame({"ts": pd.to_datetime(["2024-01-02 14:31"]), "open": [1.0], "high": [1.0],
                         "low": [1.0], "close": [1.0], "volume": [1.0]})
    with pytest.raises(ConfigError):
        write_ninjatrader(bars, tmp_path / "x.txt")


@pytest.mark.parametrize("fmt, name", [
    ("ninjatrader", "ES 2024-01-02.Last.txt"),
    ("csv", "ES_2024-01-02.csv"),
    ("parquet", "ES_2024-01-02.parquet"),
])
def test_write_synthetic_writes_one_file_per_trading_day(tmp_path, fmt, name):
    config = SyntheticConfig(days=3, seed=SEED)
    paths = write_synthetic(config, tmp_path / "out", fmt=fmt)
    assert len(paths) == 3
    assert all(path.parent == tmp_path / "out" / "ES" and path.exists() for path in paths)
    assert paths[0].name == name
    assert [p.name.replace("-", "")[3:11] for p in paths] == ["20240102", "20240103", "20240104"]

    bars = generate_bars(config)
    if fmt == "ninjatrader":
        back = pd.concat([read_ninjatrader(path) for path in paths], ignore_index=True)
        columns = ["ts", "open", "high", "low", "close", "volume"]
    elif fmt == "csv":
        text = paths[0].read_text()
        assert text.startswith("ts,open,high,low,close,volume,delta\n2024-01-01T23:01:00Z,")
        back = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
        back["ts"] = pd.to_datetime(back["ts"], utc=True)
        columns = list(bars.columns)
    else:
        back = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
        assert str(back["ts"].dtype).endswith(", UTC]")
        columns = list(bars.columns)
    assert list(back.columns) == columns
    assert np.array_equal(back["ts"].to_numpy(), bars["ts"].to_numpy())
    for column in columns[1:]:
        assert np.array_equal(back[column].to_numpy(dtype=float), bars[column].to_numpy()), column


def test_write_synthetic_rejects_unknown_format(tmp_path):
    with pytest.raises(ConfigError):
        write_synthetic(SyntheticConfig(days=1), tmp_path, fmt="xlsx")
