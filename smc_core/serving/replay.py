"""Replay: stream stored bars to the service one closed bar at a time, as NinjaTrader does,
and trade its answers with the same policy as the backtest.

Why through the service: it exercises what the strategy will see (HTTP, validation,
preprocessing, the served model and threshold), so a replayed day's P&L is the live
strategy's P&L on that day, costs included, not a notebook approximation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from smc_core.calendar import CME_EQUITY, SessionCalendar
from smc_core.evaluation.backtest import BacktestResult, InstrumentSpec, backtest
from smc_core.features import compute_features
from smc_core.policy import PolicyConfig


@dataclass
class ReplayReport:
    requests: int
    signals: dict[str, int]
    latencies_ms: np.ndarray
    result: BacktestResult
    versions: set[str]

    def summary(self) -> dict:
        metrics = self.result.metrics()
        return {"requests": self.requests, "signals": self.signals, "versions": sorted(self.versions),
                "latency_p50_ms": float(np.median(self.latencies_ms)) if len(self.latencies_ms) else None,
                "latency_p99_ms": float(np.percentile(self.latencies_ms, 99)) if len(self.latencies_ms) else None,
                "trades": int(metrics["trades"]), "net_pnl": metrics["net_pnl"], "win_rate": metrics["win_rate"]}


def request_payload(bars: pd.DataFrame, symbol: str, timeframe: str) -> dict:
    """The seed-000 request for ``bars`` (the last row is the bar that just closed)."""
    records = [{"time_utc": ts.isoformat(), "o": float(o), "h": float(h), "l": float(l), "c": float(c),
                "volume": float(v), "delta": None if d is None or not np.isfinite(d) else float(d)}
               for ts, o, h, l, c, v, d in zip(bars["ts"], bars["open"], bars["high"], bars["low"], bars["close"],
                                              bars["volume"], bars.get("delta", pd.Series([np.nan] * len(bars))))]
    return {"context_bars": records[:-1], "current_bar": records[-1], "features": {},
            "metadata": {"symbol": symbol, "timeframe": timeframe, "request_time": records[-1]["time_utc"]}}


def replay(bars: pd.DataFrame, first: int, predict: Callable[[dict], dict], *, symbol: str, timeframe: str,
           context: int = 49, instrument: InstrumentSpec = InstrumentSpec(), calendar: SessionCalendar = CME_EQUITY,
           progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    """Post every bar from row ``first`` on (with the ``context`` bars ending there), then trade the
    answers with each one's own threshold and size (the policy the service applied)."""
    if first < context - 1:
        raise ValueError(f"the first replayed bar needs {context - 1} bars before it; it is row {first}")
    probabilities = np.full((len(bars), 3), np.nan)
    served_atr = np.full(len(bars), np.nan)
    signals = {"long": 0, "short": 0, "skip": 0}
    latencies, versions, threshold = [], set(), None
    for row in range(first, len(bars)):
        started = time.perf_counter()
        answer = predict(request_payload(bars.iloc[row - context + 1: row + 1], symbol, timeframe))
        latencies.append((time.perf_counter() - started) * 1000)
        signals[answer["label"]] += 1
        versions.add(answer["model_version"])
        threshold = answer.get("threshold", threshold)
        probabilities[row] = [answer["probabilities"][k] for k in ("long", "short", "skip")]
        served_atr[row] = answer["risk"]["atr"]
        if progress is not None:
            progress(row - first + 1, len(bars) - first)
    # stops and targets from the ATR the service sent in each answer's risk block, as the strategy trades them
    atr = np.where(np.isnan(served_atr), compute_features(bars)["atr"].to_numpy(), served_atr)
    traded = bars.assign(atr=atr, session=calendar.trading_day_of(bars["ts"]).astype("int64"))
    policy = PolicyConfig(half_threshold=threshold or 0.55, full_threshold=max(threshold or 0.55, 0.70))
    result = backtest(traded.iloc[first:].reset_index(drop=True), probabilities[first:], policy, instrument)
    return ReplayReport(len(latencies), signals, np.array(latencies), result, versions)


def replay_stored_day(db, symbol: str, day, predict: Callable[[dict], dict], *, timeframe: str = "1m",
                      resampled: bool = False, context: int = 49, calendar: SessionCalendar = CME_EQUITY,
                      progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    """Replay every stored bar of one trading day, with the ``context - 1`` bars before it as history;
    ``resampled``: the database's resampling of the 1-minute bars (what the lineage computes a
    resampled timeframe's features from), not bars stored at ``timeframe``."""
    from smc_core.errors import SmcError
    from smc_core.store import load_bars, missing_day

    session_open, session_close = calendar.session_bounds(day)
    bars = load_bars(db, symbol, timeframe, session_open, session_close, history=context - 1, resampled=resampled)
    first = max(context - 1, int((bars["ts"] <= session_open).sum()))
    if not (bars["ts"] > session_open).any():
        raise SmcError(missing_day(db, symbol, timeframe, day, calendar))
    if len(bars) <= first:
        raise SmcError(f"only {len(bars)} {timeframe} bars of {symbol} are stored up to the close of {day}; "
                       f"a request needs {context} (the bar and the {context - 1} before it)")
    return replay(bars, first, predict, symbol=symbol, timeframe=timeframe, context=context, calendar=calendar,
                  progress=progress)
