"""Standard technical features, computed window by window so they are finite-memory.

Every statistic at bar t is recomputed from exactly its window [t-w+1, t], in the same
order of floating-point operations, with nothing carried over from t-1. That is what
makes the service's recomputation from a 50-bar request equal the batch value bit for
bit (DESIGN §4) — a running sum or an exponential average would drift with the starting
point. Hence also ATR and RSI use simple means (Cutler's RSI), not Wilder's recursion.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def window_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Sum of x[t-w+1 .. t], added in order; NaN where the window is incomplete or holds a NaN."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    for t in range(w - 1, n):
        total = 0.0
        for i in range(t - w + 1, t + 1):
            total += x[i]
        out[t] = total
    return out


@njit(cache=True)
def window_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean of x[t-w+1 .. t] (the window sum over w)."""
    return window_sum(x, w) / w


@njit(cache=True)
def window_std(x: np.ndarray, w: int) -> np.ndarray:
    """Sample standard deviation (ddof=1) of x[t-w+1 .. t], two-pass around the window mean."""
    mean = window_mean(x, w)
    n = x.shape[0]
    out = np.full(n, np.nan)
    for t in range(w - 1, n):
        squares = 0.0
        for i in range(t - w + 1, t + 1):
            squares += (x[i] - mean[t]) * (x[i] - mean[t])
        out[t] = np.sqrt(squares / (w - 1))
    return out


@njit(cache=True)
def window_max(x: np.ndarray, w: int) -> np.ndarray:
    """Maximum of x[t-w+1 .. t]."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    for t in range(w - 1, n):
        best = x[t - w + 1]
        for i in range(t - w + 2, t + 1):
            if x[i] > best:
                best = x[i]
        out[t] = best
    return out


def window_min(x: np.ndarray, w: int) -> np.ndarray:
    """Minimum of x[t-w+1 .. t] (negation is exact, so this is bit-identical to a direct scan)."""
    return -window_max(-x, w)


@njit(cache=True)
def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high-low, |high-close[t-1]|, |low-close[t-1]|); NaN at the first bar."""
    n = high.shape[0]
    out = np.full(n, np.nan)
    for t in range(1, n):
        out[t] = max(high[t] - low[t], abs(high[t] - close[t - 1]), abs(low[t] - close[t - 1]))
    return out


@njit(cache=True)
def lagged_log_return(close: np.ndarray, k: int) -> np.ndarray:
    """log(close[t] / close[t-k])."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    for t in range(k, n):
        out[t] = np.log(close[t] / close[t - k])
    return out


@njit(cache=True)
def cutler_rsi(close: np.ndarray, w: int) -> np.ndarray:
    """RSI from simple means of gains and losses over w changes (lookback w+1); 50 when flat."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    for t in range(w, n):
        gains = 0.0
        losses = 0.0
        for i in range(t - w + 1, t + 1):
            change = close[i] - close[i - 1]
            if change > 0:
                gains += change
            else:
                losses -= change
        out[t] = 50.0 if gains + losses == 0.0 else 100.0 * gains / (gains + losses)
    return out


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """numerator / denominator with ``fill`` where the denominator is 0 (NaN stays NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator
    return np.where(denominator == 0, fill, out)


def technical_features(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                       volume: np.ndarray, delta: np.ndarray, atr: np.ndarray) -> dict[str, np.ndarray]:
    """The price/volume set (no time features); lookbacks are declared in the catalogue."""
    log_return = lagged_log_return(close, 1)
    out: dict[str, np.ndarray] = {}
    for k in (1, 2, 3, 5, 10, 20):
        out[f"ret_{k}"] = lagged_log_return(close, k)
    bar_range = high - low
    out["range_atr"] = safe_ratio(bar_range, atr)
    out["body_ratio"] = safe_ratio(close - open_, bar_range)
    out["upper_wick_ratio"] = safe_ratio(high - np.maximum(open_, close), bar_range)
    out["lower_wick_ratio"] = safe_ratio(np.minimum(open_, close) - low, bar_range)
    out["gap_atr"] = safe_ratio(open_ - np.concatenate(([np.nan], close[:-1])), atr)
    out["rv_10"] = window_std(log_return, 10)
    out["rv_20"] = window_std(log_return, 20)
    out["atr_pct"] = safe_ratio(atr, close)
    out["rsi_14"] = cutler_rsi(close, 14)
    mean_close_20 = window_mean(close, 20)
    out["z_close_20"] = safe_ratio(close - mean_close_20, window_std(close, 20))
    out["z_volume_20"] = safe_ratio(volume - window_mean(volume, 20), window_std(volume, 20))
    out["volume_ratio_20"] = safe_ratio(volume, window_mean(volume, 20), fill=1.0)
    out["close_sma_20"] = safe_ratio(close, mean_close_20) - 1.0
    out["sma_5_20"] = safe_ratio(window_mean(close, 5), mean_close_20) - 1.0
    highest, lowest = window_max(high, 20), window_min(low, 20)
    out["stoch_20"] = safe_ratio(close - lowest, highest - lowest, fill=0.5)
    out["delta_ratio"] = safe_ratio(delta, volume)
    out["cum_delta_ratio_10"] = safe_ratio(window_sum(delta, 10), window_sum(volume, 10))
    return out


def estimate_delta(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                   volume: np.ndarray) -> np.ndarray:
    """Order-flow delta estimated from where the bar closed in its range (close-location
    value × volume): +volume at the high, −volume at the low, 0 for a doji-range bar."""
    del open_
    return volume * safe_ratio(2.0 * (close - low) - (high - low), high - low)
