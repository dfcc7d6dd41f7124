"""Data-quality measurements of stored bars, per symbol and trading day.

These are what the ``bars`` asset checks report; they read the database, so they also
catch bars that reached it by any other route than the validated ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from smc_core.calendar import SessionCalendar
from smc_core.db import Database
from smc_core.store import load_bars
from smc_core.timeframe import off_grid


@dataclass(frozen=True)
class IntegrityReport:
    rows: int
    ohlc_violations: int
    """Bars with high < max(open, close), low > min(open, close), negative volume or non-finite values."""
    off_grid: int
    """Bars whose close time is not a multiple of the timeframe."""

    @property
    def passed(self) -> bool:
        return self.ohlc_violations == 0 and self.off_grid == 0


@dataclass(frozen=True)
class CoverageReport:
    expected: int
    present: int
    missing: int
    out_of_session: int
    """Stored bars the partition owns that lie outside every session (a halt, a weekend, a holiday,
    after an early close): often a wrong time zone or calendar, never dropped silently."""
    largest_gap_bars: int
    first_missing: list[str]
    stored: int = 0
    """Every stored bar the partition owns: ``present`` + off-grid session bars + ``out_of_session``."""
    outside_examples: list[str] = field(default_factory=list)
    """The first out-of-session bar closes, in the calendar's own time zone."""
    trading_day: bool = True
    """False on a weekend or holiday of the calendar: nothing is expected."""

    @property
    def missing_ratio(self) -> float:
        return self.missing / self.expected if self.expected else 0.0


def load_day(db: Database, symbol: str, timeframe: str, day: date, calendar: SessionCalendar) -> pd.DataFrame:
    """Every stored bar trading day ``day``'s partition owns: (previous session's close, this close],
    its session's bars and those outside every session that lead into it."""
    start, end = calendar.partition_bounds(day)
    return load_bars(db, symbol, timeframe, start, end)


def integrity(bars: pd.DataFrame, width: timedelta) -> IntegrityReport:
    o, h, l, c, v = (bars[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close", "volume"))
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(np.column_stack([o, h, l, c, v])).all(axis=1) if len(bars) else np.ones(0, bool)
        bad = ~finite | (h < np.maximum(o, c)) | (l > np.minimum(o, c)) | (v < 0)
    stamps = pd.DatetimeIndex(bars["ts"]).as_unit("ns").asi8
    return IntegrityReport(len(bars), int(bad.sum()), int(off_grid(stamps, width).sum()))


def coverage(bars: pd.DataFrame, day: date, width: timedelta, calendar: SessionCalendar,
             examples: int = 5) -> CoverageReport:
    expected = calendar.expected_closes(day, width)
    stamps = pd.DatetimeIndex(bars["ts"])
    present = expected.isin(stamps)
    missing_at = expected[~present]
    outside = ~calendar.in_session(stamps) if len(stamps) else np.zeros(0, dtype=bool)
    largest = 0
    if len(expected):
        runs = np.diff(np.flatnonzero(np.concatenate(([True], present, [True])))) - 1
        largest = int(runs.max()) if len(runs) else 0
    shown = stamps[outside][:examples].tz_convert(calendar.tz) if outside.any() else []
    return CoverageReport(len(expected), int(present.sum()), len(missing_at), int(outside.sum()), largest,
                          [ts.isoformat() for ts in missing_at[:examples]], len(stamps),
                          [ts.isoformat() for ts in shown], calendar.is_trading_day(day))
