"""Synthetic futures bars that look like a NinjaTrader export, with an optional planted edge.

Why: the pipeline (ingest, features, training, serving) must be exercised end to end
without licensed market data. The bars therefore reproduce what the real thing has and
what naive generators miss: the exchange session grid, tick-rounded prices, volatility
clustering, an intraday U-shape, quiet overnight hours and gaps between sessions. With
``edge="smc"`` a known, causal Smart-Money-Concepts setup is planted, so a model that
learns something can be told apart from a broken pipeline; ``edge="none"`` runs the very
same code with a fair coin, so nothing is learnable and the marginals are unchanged;
``edge="smc_reversed"`` resolves the same setups the other way — the regime change a model
trained on ``"smc"`` loses money in, which only retraining on the new regime cures.

Bars are stamped with their close time in UTC, like everything else in the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from numba import njit

from smc_core.calendar import CME_EQUITY, SessionCalendar, zone
from smc_core.errors import ConfigError
from smc_core.timeframe import format_timeframe

EDGES = ("none", "smc", "smc_reversed")
OUTPUT_FORMATS = ("ninjatrader", "csv", "parquet")

# Volatility clustering: GARCH(1,1) on unit-variance innovations, persistence 0.98.
_GARCH_ALPHA = 0.06
_GARCH_BETA = 0.92
_INNOVATION_DOF = 5.0  # Student-t innovations: fat tails like real minute returns

# Annualisation: a nominal CME day has 23 trading hours, a year 252 trading days.
_TRADING_DAYS_PER_YEAR = 252
_NOMINAL_SESSION = timedelta(hours=23)

# Planted SMC setup (all lengths in bars), in the feature catalogue's terms: an FVG counts
# while its first bar lies in the 30-bar SMC window (formed at most 27 bars ago), and
# structure is up when ret_20 > 0, i.e. close above the close 20 bars earlier.
_FVG_FRESH_BARS = 27
_STRUCTURE_LOOKBACK = 20
_EDGE_HORIZON = 15
_ATR_BARS = 14
_DRIFT_TARGET_ATR = 1.5     # no push once the close is there (keeps the added variance small)

# Bar shape and order flow.
_WICK_SCALE = 0.7          # mean wick beyond the body, in units of the bar's sigma
_OPEN_NUDGE_PROBABILITY = 0.12  # share of bars whose first trade is a tick off the last close
_GAP_SCALE = 0.25          # gap sigma relative to a random walk through the halt at ETH volatility
_RTH_VOLUME_PER_MINUTE = 1200.0  # ES-like contracts per minute at midday
_VOLUME_NOISE = 0.35
_DELTA_SHARE = 0.4         # typical |delta| / volume on a strongly directional bar


@dataclass(frozen=True)
class Instrument:
    """What the prices are quoted in: the tick grid and the starting level."""

    symbol: str = "ES"
    tick_size: float = 0.25
    tick_value: float = 12.5
    start_price: float = 4800.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines a synthetic series: same config, same bars."""

    days: int = 5
    start: date = date(2024, 1, 2)
    timeframe: timedelta = timedelta(minutes=1)
    seed: int = 7
    instrument: Instrument = Instrument()
    calendar: SessionCalendar = CME_EQUITY
    annual_vol: float = 0.16
    edge: str = "none"
    edge_strength: float = 0.6
    edge_push: float = 0.25
    """Drift per bar, in ATR, while a setup plays out (until +1.5 ATR): how hard the edge is to
    see against the noise. 0.25 reaches the target before the stop most of the time."""
    with_delta: bool = True

    def trading_days(self) -> list[date]:
        """The days this config generates (the first ``days`` trading days from ``start``)."""
        return _trading_days(self)


# --- generation -----------------------------------------------------------------------

def generate_bars(config: SyntheticConfig) -> pd.DataFrame:
    """Bars of the first ``config.days`` trading days from ``config.start``.

    Columns ts (UTC close time), open, high, low, close, volume and, when asked, delta.
    attrs: symbol, timeframe, edge, tick_size and setups (how many setups were planted).
    """
    _check_config(config)
    width = config.timeframe
    days = _trading_days(config)
    closes, session_open, bars_per_day = _bar_grid(days, config.calendar, width)
    if min(bars_per_day) == 0:
        empty = days[bars_per_day.index(0)]
        raise ConfigError(f"timeframe {config.timeframe} leaves no bar in the session of {empty}")
    noise = _draw_noise(config.seed, days, bars_per_day)
    shock = noise["shock"]

    activity = _activity_profile(closes, config.calendar, width)
    relative_variance = activity / _mean_daily_activity(config.calendar, width)
    bar_sigma = _bar_sigma(config.annual_vol, width) * np.sqrt(relative_variance)
    gap_sigma = _gap_sigma(closes, session_open, bar_sigma, width)

    instrument = config.instrument
    follow_probability = {"smc": config.edge_strength, "smc_reversed": 1.0 - config.edge_strength}.get(config.edge, 0.5)
    open_t, high_t, low_t, close_t, variance, setup_side = _simulate(
        bar_sigma, session_open, gap_sigma, shock, noise["gap_shock"], noise["wick_up"], noise["wick_down"],
        noise["open_nudge"], noise["coin"], instrument.start_price, instrument.tick_size, follow_probability,
        config.edge_push,
    )

    decimals = _tick_decimals(instrument.tick_size)
    bars = pd.DataFrame({
        "ts": closes,
        "open": np.round(open_t * instrument.tick_size, decimals),
        "high": np.round(high_t * instrument.tick_size, decimals),
        "low": np.round(low_t * instrument.tick_size, decimals),
        "close": np.round(close_t * instrument.tick_size, decimals),
    })
    volume = _volume(activity, variance, shock, noise["volume"], width)
    bars["volume"] = volume
    if config.with_delta:
        body_in_sigmas = (close_t - open_t) * instrument.tick_size / (
            bars["close"].to_numpy() * bar_sigma * np.sqrt(variance))
        bars["delta"] = _delta(volume, body_in_sigmas, noise["delta"])
    bars.attrs.update({
        "symbol": instrument.symbol,
        "timeframe": format_timeframe(width),
        "edge": config.edge,
        "tick_size": instrument.tick_size,
        "setups": int(np.count_nonzero(setup_side)),
    })
    return bars


def _check_config(config: SyntheticConfig) -> None:
    if config.days < 1:
        raise ConfigError(f"days must be at least 1, got {config.days}")
    if config.timeframe <= timedelta(0):
        raise ConfigError(f"timeframe must be positive, got {config.timeframe}")
    if config.edge not in EDGES:
        raise ConfigError(f"edge {config.edge!r} is not one of {', '.join(EDGES)}")
    if not 0.0 <= config.edge_strength <= 1.0:
        raise ConfigError(f"edge_strength must lie in [0, 1], got {config.edge_strength}")
    if not config.annual_vol > 0:
        raise ConfigError(f"annual_vol must be positive, got {config.annual_vol}")
    if not 0.0 <= config.edge_push <= 1.5:
        raise ConfigError(f"edge_push must lie in [0, 1.5] ATR per bar, got {config.edge_push}")
    instrument = config.instrument
    if not instrument.tick_size > 0 or not instrument.start_price > instrument.tick_size:
        raise ConfigError(f"instrument {instrument.symbol}: tick_size and start_price must be positive, "
                          f"start_price above one tick")


def _trading_days(config: SyntheticConfig) -> list[date]:
    """The first ``days`` trading days on or after ``start`` (looks further ahead past holidays)."""
    span = timedelta(days=config.days * 2 + 14)
    first, found = config.start, []
    while len(found) < config.days:
        found += config.calendar.trading_days(first, first + span)
        first += span + timedelta(days=1)
    return found[: config.days]


def _bar_grid(days: list[date], calendar: SessionCalendar,
              width: timedelta) -> tuple[pd.DatetimeIndex, np.ndarray, list[int]]:
    """Close times of every expected bar, where each session's first bar is, bars per day."""
    per_day = [calendar.expected_closes(day, width).asi8 for day in days]
    closes = pd.DatetimeIndex(np.concatenate(per_day), tz="UTC").as_unit("ns")
    counts = [len(stamps) for stamps in per_day]
    session_open = np.zeros(len(closes), dtype=np.bool_)
    session_open[np.cumsum([0] + counts[:-1])] = True
    return closes, session_open, counts


def _draw_noise(seed: int, days: list[date], bars_per_day: list[int]) -> dict[str, np.ndarray]:
    """All random inputs, drawn per trading day from (seed, day).

    Why per day: a longer series extends a shorter one instead of reshuffling it, so
    adding days never rewrites the history a pipeline has already ingested.
    """
    t_scale = math.sqrt(_INNOVATION_DOF / (_INNOVATION_DOF - 2))
    parts: dict[str, list[np.ndarray]] = {}
    for day, n in zip(days, bars_per_day):
        rng = np.random.default_rng([seed, day.toordinal()])
        draws = {
            "shock": rng.standard_t(_INNOVATION_DOF, n) / t_scale,
            "gap_shock": rng.standard_t(4.0, n) / math.sqrt(2.0),
            "wick_up": rng.exponential(1.0, n),
            "wick_down": rng.exponential(1.0, n),
            "open_nudge": _open_nudges(rng.random(n)),
            "coin": rng.random(n),
            "volume": rng.standard_normal(n),
            "delta": rng.standard_normal(n),  # drawn even without delta: volume must not depend on it
        }
        for name, values in draws.items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _activity_profile(closes: pd.DatetimeIndex, calendar: SessionCalendar, width: timedelta) -> np.ndarray:
    """Relative trading intensity of each bar (midday RTH = 1), from its local clock time."""
    local = (closes - width).tz_convert(calendar.tz)
    minute = (local.hour * 60 + local.minute + local.second / 60.0).to_numpy(dtype=float)
    return _activity(minute, calendar.is_rth(closes), calendar)


def _mean_daily_activity(calendar: SessionCalendar, width: timedelta) -> float:
    """Mean activity over a nominal session: the fixed yardstick that makes bar sigma
    average out to ``annual_vol`` whatever days are generated."""
    step = width / timedelta(minutes=1)
    eth_open = calendar.regular_open.hour * 60 + calendar.regular_open.minute
    session_minutes = _NOMINAL_SESSION / timedelta(minutes=1)
    minute = (eth_open + np.arange(0.0, session_minutes, step)) % 1440
    rth_open = calendar.rth_open.hour * 60 + calendar.rth_open.minute
    rth_close = calendar.rth_close.hour * 60 + calendar.rth_close.minute
    return float(_activity(minute, (minute >= rth_open) & (minute < rth_close), calendar).mean())


def _activity(minute: np.ndarray, in_rth: np.ndarray, calendar: SessionCalendar) -> np.ndarray:
    """Intensity at local minute-of-day ``minute`` (bar open).

    Why: volume and variance follow the clock — a U-shape over regular hours (open and
    close auctions), a thin overnight session with a London bump and a burst at the 8:30 ET
    data releases. Variance is taken proportional to activity (mixture-of-distributions view).
    """
    rth_open = calendar.rth_open.hour * 60 + calendar.rth_open.minute
    rth_close = calendar.rth_close.hour * 60 + calendar.rth_close.minute
    eth_open = calendar.regular_open.hour * 60 + calendar.regular_open.minute
    u = (minute - rth_open) / (rth_close - rth_open)
    regular = 1.0 + 3.0 * np.exp(-u / 0.04) + 1.5 * np.exp(-(1.0 - u) / 0.03)
    overnight = (0.1
                 + 0.12 * np.exp(-0.5 * ((minute - (rth_open - 360)) / 60.0) ** 2)   # London morning
                 + 0.6 * np.exp(-0.5 * ((minute - (rth_open - 60)) / 4.0) ** 2)     # data releases
                 + 0.15 * np.exp(-((minute - eth_open) % 1440) / 10.0))             # Globex reopen
    return np.where(in_rth, regular, overnight)


def _bar_sigma(annual_vol: float, width: timedelta) -> float:
    """Average per-bar log-return sigma that annualises to ``annual_vol``."""
    bars_per_year = _TRADING_DAYS_PER_YEAR * (_NOMINAL_SESSION / width)
    return annual_vol / math.sqrt(bars_per_year)


def _gap_sigma(closes: pd.DatetimeIndex, session_open: np.ndarray, bar_sigma: np.ndarray,
               width: timedelta) -> np.ndarray:
    """Log-price sigma of the jump into each session's first bar (0 elsewhere).

    Why: news arrives during the daily halt and the weekend; a longer halt, a larger gap.
    """
    gap = np.zeros(len(closes))
    first = np.flatnonzero(session_open)[1:]
    if len(first):
        stamps = closes.asi8
        halt_bars = np.maximum((stamps[first] - stamps[first - 1]) / pd.Timedelta(width).value - 1.0, 1.0)
        gap[first] = _GAP_SCALE * bar_sigma[first] * np.sqrt(halt_bars)
    return gap


def _open_nudges(uniform: np.ndarray) -> np.ndarray:
    """-1, 0 or +1 tick between a bar's open and the previous close (mostly 0)."""
    half = _OPEN_NUDGE_PROBABILITY / 2
    return np.where(uniform < half, -1.0, np.where(uniform < 2 * half, 1.0, 0.0))


def _volume(activity: np.ndarray, variance: np.ndarray, shock: np.ndarray, noise: np.ndarray,
            width: timedelta) -> np.ndarray:
    """Whole-number volume: the clock, the volatility regime and the bar's own move."""
    minutes = width / timedelta(minutes=1)
    level = (_RTH_VOLUME_PER_MINUTE * minutes * activity * np.sqrt(variance) * (0.6 + 0.5 * np.abs(shock))
             * np.exp(_VOLUME_NOISE * noise - _VOLUME_NOISE**2 / 2))
    return np.maximum(np.round(level), 1.0)


def _delta(volume: np.ndarray, body_in_sigmas: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Signed aggressor imbalance: follows the bar's direction, never exceeds its volume."""
    imbalance = _DELTA_SHARE * np.tanh(0.6 * body_in_sigmas + 0.4 * noise)
    return np.round(volume * imbalance) + 0.0  # + 0.0 turns -0.0 into 0.0


@njit(cache=True)
def _simulate(bar_sigma, session_open, gap_sigma, shock, gap_shock, wick_up, wick_down, open_nudge, coin,
              start_price, tick, follow_probability, push):
    """Bar-by-bar price path in ticks, with the SMC setup detected and (maybe) driven.

    Why a loop: whether a setup exists depends on the bars already generated, and its
    drift changes the bars that follow, so the path cannot be vectorised.

    Setup rules (causal, also re-derivable from the bars alone):
      * bullish FVG forms at f when low[f] > high[f-2]: zone (high[f-2], low[f]]; it is
        fresh while t - f <= 27 and filled once a later low <= high[f-2]. The newest FVG
        replaces an older one. Bearish mirrors it: high[f] < low[f-2], zone [high[f], low[f-2]).
      * structure up when close[t] > close[t-20] (down when <).
      * bullish setup at t: a fresh, unfilled bullish FVG, high[f-2] < low[t] <= low[f]
        and structure up; the FVG is then used up. Bearish mirrors it.
      * no setup is looked for during the 15 bars after one (its outcome window).
      * a direction is drawn: the setup's with probability ``follow_probability``, the
        opposite otherwise. Each of the next 15 bars whose previous close is still short
        of the target (setup close +/- 1.5 * ATR(14)) is pushed by ``push`` * ATR that way.
        Stopping at the target keeps the edge from inflating longer-horizon variance
        and, with edge="none", from leaving much momentum behind.
    """
    n = bar_sigma.shape[0]
    open_t = np.empty(n)
    high_t = np.empty(n)
    low_t = np.empty(n)
    close_t = np.empty(n)
    variance = np.empty(n)
    setup_side = np.zeros(n, dtype=np.int8)
    true_range = np.zeros(n)

    omega = 1.0 - _GARCH_ALPHA - _GARCH_BETA
    h = 1.0
    last_innovation_sq = 1.0
    log_price = math.log(start_price)
    atr_sum = 0.0

    bull_active, bull_bottom, bull_top, bull_born = False, 0.0, 0.0, 0
    bear_active, bear_bottom, bear_top, bear_born = False, 0.0, 0.0, 0
    blocked_until = -1
    drift_left = 0
    drift_ticks = 0.0
    drift_target = 0.0

    for t in range(n):
        # volatility regime
        h = omega + _GARCH_ALPHA * last_innovation_sq + _GARCH_BETA * h
        variance[t] = h
        last_innovation_sq = h * shock[t] * shock[t]
        sigma = bar_sigma[t] * math.sqrt(h)

        # open: a gap at the session's first bar, otherwise the previous close (or a tick off)
        if t == 0 or session_open[t]:
            log_price += gap_sigma[t] * gap_shock[t]
            o = max(round(math.exp(log_price) / tick), 1.0)
        else:
            o = max(close_t[t - 1] + open_nudge[t], 1.0)

        # close: random step plus the planted drift while a setup plays out
        step = sigma * shock[t]
        if drift_left > 0:
            drift_left -= 1
            previous = close_t[t - 1]
            if (previous < drift_target) if drift_ticks > 0 else (previous > drift_target):
                step += drift_ticks * tick / math.exp(log_price)
        log_price += step
        price = math.exp(log_price)
        c = max(round(price / tick), 1.0)

        wick = _WICK_SCALE * sigma * price / tick
        hi = max(o, c) + round(wick_up[t] * wick)
        lo = max(min(o, c) - round(wick_down[t] * wick), 1.0)
        open_t[t], high_t[t], low_t[t], close_t[t] = o, hi, lo, c

        # ATR(14) in ticks, simple mean of true ranges
        if t == 0:
            true_range[t] = hi - lo
        else:
            prev = close_t[t - 1]
            true_range[t] = max(hi - lo, abs(hi - prev), abs(lo - prev))
        atr_sum += true_range[t]
        if t >= _ATR_BARS:
            atr_sum -= true_range[t - _ATR_BARS]

        # setup: retest of a fresh FVG in the direction of structure
        if t > blocked_until and t >= _STRUCTURE_LOOKBACK:
            side = 0
            if (bull_active and t - bull_born <= _FVG_FRESH_BARS and bull_bottom < lo <= bull_top
                    and c > close_t[t - _STRUCTURE_LOOKBACK]):
                side = 1
                bull_active = False
            elif (bear_active and t - bear_born <= _FVG_FRESH_BARS and bear_bottom <= hi < bear_top
                    and c < close_t[t - _STRUCTURE_LOOKBACK]):
                side = -1
                bear_active = False
            if side != 0:
                setup_side[t] = side
                direction = side if coin[t] < follow_probability else -side
                atr = atr_sum / _ATR_BARS
                drift_ticks = direction * push * atr
                drift_target = c + direction * _DRIFT_TARGET_ATR * atr
                drift_left = _EDGE_HORIZON
                blocked_until = t + _EDGE_HORIZON

        # fills, then gaps formed by this bar
        if bull_active and lo <= bull_bottom:
            bull_active = False
        if bear_active and hi >= bear_top:
            bear_active = False
        if t >= 2:
            if lo > high_t[t - 2]:
                bull_active, bull_bottom, bull_top, bull_born = True, high_t[t - 2], lo, t
            if hi < low_t[t - 2]:
                bear_active, bear_bottom, bear_top, bear_born = True, hi, low_t[t - 2], t

    return open_t, high_t, low_t, close_t, variance, setup_side


# --- writing --------------------------------------------------------------------------

def write_ninjatrader(bars: pd.DataFrame, path: Path, tz: str = "America/Chicago") -> Path:
    """Write ``bars`` as a NinjaTrader historical-data export (``yyyyMMdd HHmmss;o;h;l;c;v``).

    Why this shape: it is what NinjaTrader's exporter writes and its importer reads —
    bar close time in local exchange time, ';' separated, no header, integer volume.
    Prices use the fewest decimals that show them exactly on the tick grid.
    """
    path = Path(path)
    ts = bars["ts"]
    if getattr(ts.dt, "tz", None) is None:
        raise ConfigError("bars.ts must be time-zone aware (UTC close times)")
    local = pd.DatetimeIndex(ts).tz_convert(zone(tz).key)
    decimals = _price_decimals(bars)
    scale = 10**decimals
    prices = np.column_stack([np.round(bars[name].to_numpy(dtype=float) * scale) for name in
                              ("open", "high", "low", "close")]).astype(np.int64)
    volume = np.round(bars["volume"].to_numpy(dtype=float)).astype(np.int64)
    text = _render_ninjatrader(
        local.year.to_numpy(np.int64), local.month.to_numpy(np.int64), local.day.to_numpy(np.int64),
        local.hour.to_numpy(np.int64), local.minute.to_numpy(np.int64), local.second.to_numpy(np.int64),
        prices, decimals, volume,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.tobytes())
    return path


def write_synthetic(config: SyntheticConfig, out_dir: Path, fmt: str = "ninjatrader",
                    tz: str = "America/Chicago") -> list[Path]:
    """Generate ``config`` and write one file per trading day into ``out_dir/<SYMBOL>/``.

    Why per day: that is how exports arrive, one file per session.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    zone(tz)
    bars = generate_bars(config)
    symbol = config.instrument.symbol
    folder = Path(out_dir) / symbol
    folder.mkdir(parents=True, exist_ok=True)

    trading_day = config.calendar.trading_day_of(bars["ts"])
    starts = np.r_[0, np.flatnonzero(trading_day[1:] != trading_day[:-1]) + 1]
    ends = np.r_[starts[1:], len(bars)]
    paths = []
    for start, end in zip(starts, ends):
        day = str(trading_day[start])
        day_bars = bars.iloc[start:end].reset_index(drop=True)
        day_bars.attrs = {k: v for k, v in bars.attrs.items() if k != "setups"}
        if fmt == "ninjatrader":
            paths.append(write_ninjatrader(day_bars, folder / f"{symbol} {day}.Last.txt", tz=tz))
        elif fmt == "csv":
            paths.append(_write_csv(day_bars, folder / f"{symbol}_{day}.csv"))
        else:
            path = folder / f"{symbol}_{day}.parquet"
            day_bars.to_parquet(path, index=False)
            paths.append(path)
    return paths


def _write_csv(bars: pd.DataFrame, path: Path) -> Path:
    """Generic CSV: ISO-8601 UTC close times with a Z, whole-number volume and delta."""
    out = bars.copy()
    out["ts"] = out["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in ("volume", "delta"):
        if name in out:
            out[name] = out[name].round().astype(np.int64)
    out.to_csv(path, index=False, lineterminator="\n")
    return path


def _tick_decimals(tick_size: float) -> int:
    """Fewest decimals that write every multiple of ``tick_size`` exactly (0.25 -> 2)."""
    for decimals in range(10):
        scaled = tick_size * 10**decimals
        if abs(scaled - round(scaled)) < 1e-9 * max(1.0, scaled):
            return decimals
    return 10


def _price_decimals(bars: pd.DataFrame) -> int:
    """Decimals to write: from the tick size when known, else the fewest the prices need."""
    if "tick_size" in bars.attrs:
        return _tick_decimals(float(bars.attrs["tick_size"]))
    prices = bars[["open", "high", "low", "close"]].to_numpy(dtype=float)
    for decimals in range(9):
        scaled = prices * 10**decimals
        if np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-6):
            return decimals
    return 9


@njit(cache=True)
def _digit_count(value):
    digits = 1
    while value >= 10:
        value //= 10
        digits += 1
    return digits


@njit(cache=True)
def _write_uint(buffer, position, value, min_digits):
    """Write a non-negative integer as ASCII digits, zero-padded to ``min_digits``."""
    digits = max(_digit_count(value), min_digits)
    for i in range(digits - 1, -1, -1):
        buffer[position + i] = 48 + value % 10
        value //= 10
    return position + digits


@njit(cache=True)
def _render_ninjatrader(year, month, day, hour, minute, second, prices, decimals, volume):
    """All lines as one byte buffer (compiled: 1M rows take well under a second)."""
    n = year.shape[0]
    scale = 10**decimals
    widest_price = 1
    for value in prices.ravel():
        widest_price = max(widest_price, abs(value))
    widest_volume = 1
    for value in volume:
        widest_volume = max(widest_volume, abs(value))
    price_width = _digit_count(widest_price // scale) + decimals + 2  # sign and point
    line_width = 15 + 4 * (1 + price_width) + 1 + 1 + _digit_count(widest_volume) + 1
    buffer = np.empty(n * line_width, dtype=np.uint8)
    pos = 0
    for row in range(n):
        pos = _write_uint(buffer, pos, year[row], 4)
        pos = _write_uint(buffer, pos, month[row], 2)
        pos = _write_uint(buffer, pos, day[row], 2)
        buffer[pos] = 32  # ' '
        pos += 1
        pos = _write_uint(buffer, pos, hour[row], 2)
        pos = _write_uint(buffer, pos, minute[row], 2)
        pos = _write_uint(buffer, pos, second[row], 2)
        for column in range(4):
            buffer[pos] = 59  # ';'
            pos += 1
            value = prices[row, column]
            if value < 0:
                buffer[pos] = 45  # '-'
                pos += 1
                value = -value
            pos = _write_uint(buffer, pos, value // scale, 1)
            fraction = value % scale
            if fraction:
                places = decimals
                while fraction % 10 == 0:
                    fraction //= 10
                    places -= 1
                buffer[pos] = 46  # '.'
                pos += 1
                pos = _write_uint(buffer, pos, fraction, places)
        buffer[pos] = 59
        pos += 1
        count = volume[row]
        if count < 0:
            buffer[pos] = 45
            pos += 1
            count = -count
        pos = _write_uint(buffer, pos, count, 1)
        buffer[pos] = 10  # '\n'
        pos += 1
    return buffer[:pos]

