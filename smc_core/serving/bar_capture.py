"""Live bars: every bar a caller sends is kept, and short requests are completed from them.

Why a book in memory: each /predict request repeats the 48 bars of the one before it, so
writing them all would cost the database 49 rows per request. The book remembers the
recent bars of each series (symbol, timeframe) as they were first received or loaded from
the store; only a bar it has not seen, or one whose values differ from what it holds,
goes to the background writer. The same book completes a request that sends fewer bars
than the model needs, without a database read on the request path.

Contiguity: the book links each bar to the one before it when both arrived together (one
request, one upload, one read of the store), so a completion never bridges a stretch
the service has not seen.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import psycopg

from smc_core.db import Database
from smc_core.ingest import LiveCounts, refresh_resampled, write_live_bars
from smc_core.serving.prediction_log import WRITE_TIMEOUT_S, direct_connection, permanent
from smc_core.serving.spool import DurableWriter, Spool

log = logging.getLogger("smc.serving.bars")

BOOK_CAPACITY = 20_000
"""Bars kept per series: two weeks of one-minute RTH+ETH bars, a few MB."""


class LiveBar(NamedTuple):
    """One received bar as it is written (``ts`` is its close, UTC nanoseconds)."""

    symbol: str
    timeframe: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    delta: float | None
    source: str


@dataclass
class _Entry:
    values: tuple
    previous: int | None
    """ts of the bar known to come right before this one, if any."""


class _Series:
    def __init__(self):
        self.entries: dict[int, _Entry] = {}
        self.conflicts: set[tuple] = set()


class BarBook:
    """Recent bars per series (symbol, timeframe), shared by the request thread and uploads."""

    def __init__(self, capacity: int = BOOK_CAPACITY):
        self.capacity = capacity
        self._series: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()

    def observe(self, symbol: str, timeframe: str, stamps: np.ndarray, values: list[tuple]) -> list[int]:
        """Record bars received together (ts-ascending); return the positions that need a database write:
        bars not seen before, and bars whose values differ from the ones held (each distinct value once)."""
        needed = []
        with self._lock:
            series = self._series.setdefault((symbol, timeframe), _Series())
            entries = series.entries
            previous = None
            for position, (ts, value) in enumerate(zip(stamps.tolist(), values)):
                entry = entries.get(ts)
                if entry is None:
                    entries[ts] = _Entry(value, previous)
                    needed.append(position)
                else:
                    if entry.previous is None and previous is not None:
                        entry.previous = previous
                    if entry.values != value and (ts, value) not in series.conflicts:
                        series.conflicts.add((ts, value))
                        needed.append(position)
                previous = ts
            if len(entries) > self.capacity * 1.25:
                self._trim(series)
        return needed

    def before(self, symbol: str, timeframe: str, first_ts: int, count: int) -> list[tuple[int, tuple]]:
        """Up to ``count`` bars known to precede ``first_ts`` without a gap, oldest first."""
        found: list[tuple[int, tuple]] = []
        with self._lock:
            series = self._series.get((symbol, timeframe))
            if series is None:
                return found
            entry = series.entries.get(first_ts)
            while entry is not None and entry.previous is not None and len(found) < count:
                ts = entry.previous
                entry = series.entries.get(ts)
                if entry is None:
                    break
                found.append((ts, entry.values))
        return found[::-1]

    def _trim(self, series: _Series) -> None:
        keep = sorted(series.entries)[-self.capacity:]
        oldest = keep[0]
        series.entries = {ts: series.entries[ts] for ts in keep}
        series.conflicts = {c for c in series.conflicts if c[0] >= oldest}


def bar_values(o, h, l, c, v, d) -> list[tuple]:  # noqa: E741
    """Per-bar value tuples (delta None when absent) from column arrays."""
    deltas = [None if x != x else x for x in d.tolist()]  # NaN → None
    return list(zip(o.tolist(), h.tolist(), l.tolist(), c.tolist(), v.tolist(), deltas))


@dataclass
class CaptureStats:
    inserted: int = 0
    unchanged: int = 0
    conflicting: int = 0


def bar_writer(database, spool: Spool, stats: CaptureStats,
               on_conflict: Callable[[int], None] | None = None, **options) -> DurableWriter:
    """The background writer of received bars (``LiveBar`` rows), spooled through outages."""
    connection = direct_connection(database)

    def write(rows: list[LiveBar]) -> None:
        with connection.transaction() as conn:
            counts = store_live_bars(conn, rows)
        with connection.outside_transaction() as conn:  # committed: now the resampled timeframes can see them
            for timeframe in {row.timeframe for row in rows}:
                stamps = [row.ts for row in rows if row.timeframe == timeframe]
                refresh_resampled(conn, timeframe, pd.Timestamp(min(stamps), tz="UTC"),
                                  pd.Timestamp(max(stamps), tz="UTC"))
        stats.inserted += counts.inserted
        stats.unchanged += counts.unchanged
        stats.conflicting += counts.conflicting
        if counts.conflicting and on_conflict is not None:
            on_conflict(counts.conflicting)

    return DurableWriter("bar-capture", write, spool, encode=list, decode=lambda values: LiveBar(*values),
                         is_permanent=permanent, **options)


def store_live_bars(conn: psycopg.Connection, rows: list[LiveBar]) -> LiveCounts:
    """Write received bars, grouped by series and source, inside the caller's transaction."""
    groups: dict[tuple[str, str, str], dict[int, LiveBar]] = {}
    for row in rows:  # a later copy of the same bar in one batch wins; conflicts are judged against the store
        groups.setdefault((row.symbol, row.timeframe, row.source), {})[row.ts] = row
    inserted = unchanged = conflicting = 0
    last_id = 0
    for (symbol, timeframe, source), bars in groups.items():
        ordered = [bars[ts] for ts in sorted(bars)]
        counts = write_live_bars(conn, symbol, timeframe, live_frame(ordered), source)
        inserted, unchanged = inserted + counts.inserted, unchanged + counts.unchanged
        conflicting, last_id = conflicting + counts.conflicting, counts.ingest_id
    return LiveCounts(inserted, unchanged, conflicting, last_id)


def live_frame(rows: list[LiveBar]) -> pd.DataFrame:
    return pd.DataFrame({
        "ts": pd.to_datetime(np.array([r.ts for r in rows], dtype="int64"), unit="ns", utc=True),
        "open": np.array([r.open for r in rows], dtype="float64"),
        "high": np.array([r.high for r in rows], dtype="float64"),
        "low": np.array([r.low for r in rows], dtype="float64"),
        "close": np.array([r.close for r in rows], dtype="float64"),
        "volume": np.array([r.volume for r in rows], dtype="float64"),
        "delta": np.array([np.nan if r.delta is None else r.delta for r in rows], dtype="float64"),
    })


def load_recent(db: Database, book: BarBook, symbol: str, timeframe: str, count: int) -> int:
    """Warm the book with the newest ``count`` stored bars of a series; how many were loaded."""
    with db.connection(timeout=WRITE_TIMEOUT_S) as conn:
        rows = conn.execute(
            """SELECT ts, open, high, low, close, volume, delta FROM bars WHERE symbol = %s AND timeframe = %s
               ORDER BY ts DESC LIMIT %s""", (symbol, timeframe, count)).fetchall()[::-1]
    if rows:
        stamps = pd.DatetimeIndex([r[0] for r in rows]).as_unit("ns").asi8
        book.observe(symbol, timeframe, stamps, [tuple(r[1:]) for r in rows])  # contiguous: the store's order
    return len(rows)
