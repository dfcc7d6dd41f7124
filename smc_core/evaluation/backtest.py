"""Bar-by-bar backtest of the trading policy with fills, protective orders and costs.

Conventions, stated once:
- a prediction is made at the close of bar t; its order fills at the open of bar t+1;
- stop-loss and take-profit are checked against each later bar's high and low; when both
  lie inside one bar the stop is assumed first (the conservative order); a gap through
  the stop fills at the open;
- every position is flat at its session's last bar (no overnight risk, as the labels);
  no entries are taken on that bar;
- every fill pays ``slippage_ticks`` against the trader and ``commission`` per contract;
- P&L is in dollars (points × multiplier) on fixed contracts; returns are P&L over
  ``capital``; daily returns are per trading session; Sharpe and Sortino are annualised
  by √252 with a zero risk-free rate; max drawdown is the largest fall of equity from its
  running peak, in percent of that peak.
"""

from __future__ import annotations

import math

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smc_core.errors import ConfigError
from smc_core.instruments import built_in
from smc_core.policy import PolicyConfig, decide

TRADING_DAYS_PER_YEAR = 252
BAR_COLUMNS = ("ts", "open", "high", "low", "close", "atr", "session")


_ES = built_in("ES")


@dataclass(frozen=True)
class InstrumentSpec:
    """Contract terms and trading costs; defaults are ES's in the instruments file (any symbol's:
    ``smc_core.instruments.instrument(symbol).costs()``)."""

    symbol: str = _ES.symbol
    tick_size: float = _ES.tick_size
    tick_value: float = _ES.tick_value
    commission: float = _ES.commission
    """Dollars per contract per fill (each side)."""
    slippage_ticks: float = _ES.slippage_ticks
    """Ticks lost on every fill."""
    capital: float = 100_000.0
    """Account size that returns are measured against."""

    def __post_init__(self):
        if self.tick_size <= 0 or self.tick_value <= 0 or self.capital <= 0:
            raise ConfigError("tick_size, tick_value and capital must be > 0")
        if self.commission < 0 or self.slippage_ticks < 0:
            raise ConfigError("commission and slippage_ticks must be >= 0")

    @property
    def multiplier(self) -> float:
        """Dollars per point."""
        return self.tick_value / self.tick_size

    def round_trip_cost(self, contracts: int = 1) -> float:
        return 2 * contracts * (self.commission + self.slippage_ticks * self.tick_value)


def one_spec(instrument: "InstrumentSpec | Mapping[str, InstrumentSpec]") -> InstrumentSpec:
    """A single spec from one or a per-symbol mapping (the first: capital is shared by all)."""
    return next(iter(instrument.values())) if isinstance(instrument, Mapping) else instrument


def spec_of(instrument: "InstrumentSpec | Mapping[str, InstrumentSpec]", symbol: str) -> InstrumentSpec:
    """``symbol``'s spec when costs differ per symbol, else the one spec."""
    return instrument[symbol] if isinstance(instrument, Mapping) else instrument


@dataclass
class BacktestResult:
    pnl: np.ndarray
    """Dollar P&L per bar, net of costs; sums exactly to the trades' P&L."""
    in_market: np.ndarray
    trades: pd.DataFrame
    ts: np.ndarray
    session: np.ndarray
    instrument: InstrumentSpec

    @property
    def returns(self) -> np.ndarray:
        """Per-bar returns on capital: what the statistical gates test."""
        return self.pnl / self.instrument.capital

    def daily_returns(self) -> pd.Series:
        return pd.Series(self.returns).groupby(self.session).sum()

    def metrics(self) -> dict[str, float]:
        return performance(self.pnl, self.session, self.trades, self.in_market, self.instrument.capital)


def backtest(bars: pd.DataFrame, probabilities: np.ndarray, policy: PolicyConfig = PolicyConfig(),
             instrument: InstrumentSpec = InstrumentSpec()) -> BacktestResult:
    """Trade ``probabilities`` ([n, 3] long/short/skip per bar; a NaN row means no prediction)."""
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {missing}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(bars), 3):
        raise ValueError(f"probabilities must be [{len(bars)}, 3] (one row per bar), got {list(probabilities.shape)}")
    open_, high, low, close, atr = (bars[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "atr"))
    session = bars["session"].to_numpy()
    ts = bars["ts"].to_numpy()
    n = len(bars)
    slip = instrument.slippage_ticks * instrument.tick_size
    multiplier, commission = instrument.multiplier, instrument.commission
    pnl, in_market = np.zeros(n), np.zeros(n, dtype=bool)
    trades: list[dict] = []
    position, entry_price, entry_index, mark, stop, target = 0, 0.0, -1, 0.0, 0.0, 0.0
    pending = None

    def close_position(i: int, price: float, reason: str) -> None:
        nonlocal position
        direction = 1 if position > 0 else -1
        fill = price - direction * slip
        pnl[i] += (fill - mark) * position * multiplier - commission * abs(position)
        trades.append({"entry_ts": ts[entry_index], "exit_ts": ts[i], "direction": direction,
                       "contracts": abs(position), "entry_price": entry_price, "exit_price": fill, "reason": reason,
                       "pnl": (fill - entry_price) * position * multiplier - 2 * commission * abs(position)})
        position = 0

    for i in range(n):
        if pending is not None:
            if position:
                close_position(i, open_[i], "reverse")
            direction = pending.direction
            entry_price = mark = open_[i] + direction * slip
            entry_index, position = i, direction * pending.contracts
            stop = entry_price - direction * pending.stop_distance
            target = entry_price + direction * pending.target_distance
            pnl[i] -= commission * pending.contracts
            pending = None
        if position:
            in_market[i] = True
            if position > 0 and low[i] <= stop:
                close_position(i, min(open_[i], stop), "stop")
            elif position < 0 and high[i] >= stop:
                close_position(i, max(open_[i], stop), "stop")
            elif position > 0 and high[i] >= target or position < 0 and low[i] <= target:
                close_position(i, target, "target")
            elif policy.max_holding_bars is not None and i - entry_index + 1 >= policy.max_holding_bars:
                close_position(i, close[i], "time")
        last_of_session = i == n - 1 or session[i + 1] != session[i]
        if position and last_of_session:
            close_position(i, close[i], "session_close")
        if position:
            pnl[i] += (close[i] - mark) * position * multiplier
            mark = close[i]
        if not last_of_session and np.isfinite(probabilities[i]).all() and np.isfinite(atr[i]):
            decision = decide(probabilities[i], position, atr[i], policy)
            if decision.action in ("enter", "reverse") and decision.contracts > 0:
                pending = decision
    columns = ["entry_ts", "exit_ts", "direction", "contracts", "entry_price", "exit_price", "reason", "pnl"]
    return BacktestResult(pnl, in_market, pd.DataFrame(trades, columns=columns), ts, session, instrument)


def performance(pnl: np.ndarray, session: np.ndarray, trades: pd.DataFrame, in_market: np.ndarray,
                capital: float) -> dict[str, float]:
    """The metrics of one backtest under this module's conventions; NaN where undefined."""
    daily = pd.Series(pnl / capital).groupby(session).sum().to_numpy()
    equity = capital + np.cumsum(pnl)
    peak = np.maximum.accumulate(np.concatenate([[capital], equity]))[1:]
    wins, losses = trades["pnl"][trades["pnl"] > 0], trades["pnl"][trades["pnl"] <= 0]
    std = daily.std(ddof=1) if len(daily) > 1 else float("nan")
    downside = np.sqrt(np.mean(np.minimum(daily, 0.0) ** 2)) if len(daily) else float("nan")
    annual = np.sqrt(TRADING_DAYS_PER_YEAR)
    return {
        "total_return": float(pnl.sum() / capital),
        "sharpe": float(daily.mean() / std * annual) if std and np.isfinite(std) else float("nan"),
        "sortino": float(daily.mean() / downside * annual) if downside and np.isfinite(downside) else float("nan"),
        "max_drawdown_pct": float(100 * np.max(1 - equity / peak)) if len(equity) else 0.0,
        "win_rate": float(len(wins) / len(trades)) if len(trades) else float("nan"),
        "profit_factor": float(wins.sum() / -losses.sum()) if len(losses) and losses.sum() < 0 else float("nan"),
        "avg_win": float(wins.mean()) if len(wins) else float("nan"),
        "avg_loss": float(losses.mean()) if len(losses) else float("nan"),
        "trades": float(len(trades)),
        "exposure": float(in_market.mean()) if len(in_market) else 0.0,
        "days": float(len(daily)),
        "net_pnl": float(pnl.sum()),
    }


UNDEFINED_BECAUSE = {
    "sharpe": "undefined: fewer than two trading days, or no day-to-day variation",
    "sortino": "undefined: no losing day (no downside deviation)",
    "win_rate": "undefined: no trades",
    "profit_factor": "undefined: no losing trade",
    "avg_win": "undefined: no winning trade",
    "avg_loss": "undefined: no losing trade",
}


def undefined_metrics(metrics: dict[str, float]) -> dict[str, str]:
    """Why each undefined (NaN) metric of ``performance`` is undefined: shown instead of ``nan``."""
    return {key: UNDEFINED_BECAUSE.get(key, "undefined") for key, value in metrics.items() if not math.isfinite(value)}


def equity_chart(result: BacktestResult, path: Path, title: str, benchmark: BacktestResult | None = None) -> Path:
    """Equity curve (and a benchmark's, if given) above the drawdown, as a PNG."""
    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    times = pd.DatetimeIndex(result.ts)
    for series, name in ((result, "challenger"), (benchmark, "champion")):
        if series is None:
            continue
        equity = series.instrument.capital + np.cumsum(series.pnl)
        top.plot(pd.DatetimeIndex(series.ts), equity, label=name)
    equity = result.instrument.capital + np.cumsum(result.pnl)
    drawdown = 100 * (equity / np.maximum.accumulate(equity) - 1)
    bottom.fill_between(times, drawdown, 0, color="tab:red", alpha=0.5)
    top.set(title=title, ylabel="equity ($)")
    top.legend(loc="upper left")
    bottom.set(ylabel="drawdown (%)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
