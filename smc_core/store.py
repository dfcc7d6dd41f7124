"""Reading bars and reading/writing the derived tables (features, labels).

Derived rows are replaced per (symbol, timeframe, time range) inside one transaction:
they are a pure function of the bars, so recomputing a partition must leave exactly the
new rows, never a mix. Bars themselves are only ever written by ``smc_core.ingest``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from smc_core.db import Database, redact
from smc_core.errors import ConfigError
from smc_core.timeframe import RESAMPLED_FROM_1M, timeframe_ns

if TYPE_CHECKING:  # the bar layer must not import the feature code
    from smc_core.calendar import SessionCalendar
    from smc_core.features.catalogue import FeatureCatalogue

BAR_COLUMNS = ["ts", "open", "high", "low", "close", "volume", "delta"]
LABEL_COLUMNS = ["label", "t1", "ret", "barrier"]


_COLUMNS = "ts, open, high, low, close, volume, delta"
_BEFORE, _AFTER = "-infinity", "infinity"


def _series(symbol: str, timeframe: str, resampled: bool, after, until) -> tuple[str, tuple]:
    """The FROM … WHERE of one bar series' bars with close in (after, until], and its parameters:
    stored bars of ``timeframe``, or, ``resampled``, the database's resampling of the 1-minute
    bars (``smc_resampled_bars``: the views ``bars_5m`` … ``bars_1h`` bounded by time; sql/016).

    A resampled bar is known at its close, once every 1-minute bar of its bucket is: so the
    bucket still filling (its close after the newest stored 1-minute bar) is left out, and
    nothing of an unfinished bar reaches a feature."""
    if not resampled:
        return ("bars WHERE symbol = %s AND timeframe = %s AND ts > %s::timestamptz AND ts <= %s::timestamptz",
                (symbol, timeframe, after, until))
    if timeframe not in RESAMPLED_FROM_1M:
        raise ConfigError(f"timeframe {timeframe} is not resampled in the database: use one of "
                          f"{', '.join(RESAMPLED_FROM_1M)}")
    return "smc_resampled_bars(%s, %s, %s::timestamptz, %s::timestamptz) WHERE true", (symbol, timeframe, after, until)


def _rows_between(conn, symbol: str, timeframe: str, resampled: bool, after, until) -> list:
    source, params = _series(symbol, timeframe, resampled, after, until)
    return conn.execute(f"SELECT {_COLUMNS} FROM {source} ORDER BY ts", params).fetchall()


def _rows_next_to(conn, symbol: str, timeframe: str, resampled: bool, edge, count: int, side: str) -> list:
    """Up to ``count`` bars just before (close <= edge) or after (close > edge) ``edge``, oldest
    first. A resampled read is bounded first: ``count + 1`` buckets' worth of 1-minute bars
    (a bucket holds at most that many) span at least ``count`` finished buckets."""
    after, until = (_BEFORE, edge) if side == "before" else (edge, _AFTER)
    if resampled:
        bound = _one_minute_bar_away(conn, symbol, edge, (count + 1) * _bucket_minutes(timeframe), side)
        after, until = (bound or _BEFORE, edge) if side == "before" else (edge, bound or _AFTER)
    source, params = _series(symbol, timeframe, resampled, after, until)
    order = "DESC" if side == "before" else ""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM {source} ORDER BY ts {order} LIMIT %s", (*params, count)).fetchall()
    return rows[::-1] if side == "before" else rows


def _bucket_minutes(timeframe: str) -> int:
    return timeframe_ns(timeframe) // timeframe_ns("1m")


def _one_minute_bar_away(conn, symbol: str, edge, steps: int, side: str):
    """The close of the 1-minute bar ``steps`` bars before ``edge`` (the bars in (it, edge] are
    that many) or after it; None when fewer are stored."""
    query = ("SELECT ts FROM bars WHERE symbol = %s AND timeframe = '1m' AND ts <= %s ORDER BY ts DESC OFFSET %s LIMIT 1"
             if side == "before" else
             "SELECT ts FROM bars WHERE symbol = %s AND timeframe = '1m' AND ts > %s ORDER BY ts OFFSET %s LIMIT 1")
    row = conn.execute(query, (symbol, edge, steps)).fetchone()
    return row[0] if row else None


def load_bars(db: Database, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp,
              *, history: int = 0, resampled: bool = False) -> pd.DataFrame:
    """Bars with close in (start, end], preceded by up to ``history`` earlier bars (the
    tail a lookback needs), oldest first; ``delta`` is NaN where the data had none.
    ``resampled``: the series the database resamples from 1-minute bars (``_series``)."""
    with db.connection() as conn:
        rows = _rows_between(conn, symbol, timeframe, resampled, start, end)
        earlier = _rows_next_to(conn, symbol, timeframe, resampled, start, history, "before") if history > 0 else []
    return _frame(earlier + rows)


def load_session_bars(db: Database, symbol: str, timeframe: str, calendar: "SessionCalendar", day, *,
                      include_outside: bool, history: int = 0, future: int = 0,
                      resampled: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """The bars trading day ``day``'s partition computes on, oldest first, and which of them are the
    day's own: its session's bars (with ``include_outside``, also the bars outside every session
    that lead into it), preceded by ``history`` and followed by ``future`` bars of the same kind.

    Why one reader: features, labels and the coverage check must agree bar for bar on what a
    partition holds (the bar-count reconciliation), and an excluded bar must not reach a
    feature's lookback either.
    """
    return SessionBars(db, symbol, timeframe, calendar, [day], include_outside=include_outside, history=history,
                       future=future, resampled=resampled).of(day)


class SessionBars:
    """What ``load_session_bars`` gives for each of ``days``, from three queries in all instead of
    three per day: the kept bars from ``history`` before the first day to ``future`` after the last
    (a run over a range of partitions reads its bars once)."""

    def __init__(self, db: Database, symbol: str, timeframe: str, calendar: "SessionCalendar", days, *,
                 include_outside: bool, history: int = 0, future: int = 0, resampled: bool = False):
        self.calendar, self.include_outside, self.history, self.future = calendar, include_outside, history, future
        bounds = [self._bounds(day) for day in days]
        start, end = min(b[0] for b in bounds), max(b[1] for b in bounds)
        series = (symbol, timeframe, resampled)
        own = _kept(load_bars(db, symbol, timeframe, start, end, resampled=resampled), calendar, include_outside)
        before = _neighbours(db, series, calendar, start, history, include_outside, "before")
        after = _neighbours(db, series, calendar, end, future, include_outside, "after")
        self.bars = pd.concat([before, own, after], ignore_index=True) if len(before) or len(after) else own
        self._ns = pd.DatetimeIndex(self.bars["ts"]).as_unit("ns").asi8

    def _bounds(self, day) -> tuple[pd.Timestamp, pd.Timestamp]:
        first, end = self.calendar.partition_bounds(day)
        return (first if self.include_outside else self.calendar.session_bounds(day)[0]), end

    def of(self, day) -> tuple[pd.DataFrame, np.ndarray]:
        """``day``'s bars with ``history`` before and ``future`` after, and which are the day's own."""
        start, end = self._bounds(day)
        lo = int(np.searchsorted(self._ns, pd.Timestamp(start).value, side="right"))  # close in (start, end]
        hi = int(np.searchsorted(self._ns, pd.Timestamp(end).value, side="right"))
        first, last = max(0, lo - self.history), min(len(self.bars), hi + self.future)
        frame = self.bars.iloc[first:last].reset_index(drop=True)
        mine = np.zeros(len(frame), dtype=bool)
        mine[lo - first: hi - first] = True
        return frame, mine


def _kept(frame: pd.DataFrame, calendar: "SessionCalendar", include_outside: bool) -> pd.DataFrame:
    if include_outside or frame.empty:
        return frame.reset_index(drop=True)
    return frame[calendar.in_session(frame["ts"])].reset_index(drop=True)


def _neighbours(db: Database, series: tuple[str, str, bool], calendar: "SessionCalendar", edge: pd.Timestamp,
                count: int, include_outside: bool, side: str) -> pd.DataFrame:
    """Up to ``count`` kept bars of ``series`` (symbol, timeframe, resampled) just before
    (ts <= edge) or after (ts > edge) ``edge``."""
    if count <= 0:
        return _frame([])
    fetch = count
    while True:
        with db.connection() as conn:
            rows = _rows_next_to(conn, *series, edge, fetch, side)
        frame = _frame(rows)
        kept = _kept(frame, calendar, include_outside)
        if len(kept) >= count or len(rows) < fetch:  # enough, or nothing more is stored
            return kept.iloc[-count:] if side == "before" else kept.iloc[:count]
        fetch *= 4


def _frame(rows) -> pd.DataFrame:
    """Bar rows as a frame: UTC nanosecond times, float64 values (a missing delta is NaN). Built
    column by column from arrays: pandas' per-column conversions cost milliseconds per call, and a
    ranged run reads thousands of small frames."""
    ts = pd.DatetimeIndex(pd.to_datetime([row[0] for row in rows], utc=True)).as_unit("ns")
    values = np.array([row[1:] for row in rows], dtype="float64").reshape(len(rows), len(BAR_COLUMNS) - 1)
    return pd.DataFrame({"ts": ts, **{column: values[:, i] for i, column in enumerate(BAR_COLUMNS[1:])}})


def stored_trading_days(db: Database, symbol: str, timeframe: str, calendar: "SessionCalendar") -> list:
    """Trading days with stored bars of one series. The database sends each distinct quarter hour
    its bars close in (rounded up: sessions open and close on quarter hours), not every bar."""
    with db.connection() as connection:
        rows = connection.execute(
            """SELECT DISTINCT date_bin('15 minutes', ts - interval '1 microsecond', timestamptz '2000-01-01 00:00Z')
                               + interval '15 minutes' FROM bars WHERE symbol = %s AND timeframe = %s""",
            (symbol, timeframe)).fetchall()
    if not rows:
        return []
    quarters = pd.DatetimeIndex(pd.to_datetime([row[0] for row in rows], utc=True)).as_unit("ns").sort_values()
    return sorted({d.item() for d in np.unique(calendar.trading_day_of(quarters))})


def missing_day(db: Database, symbol: str, timeframe: str, day, calendar: "SessionCalendar") -> str:
    """Why there are no bars for a day, naming what is stored and where: the database, the
    symbols, the symbol's timeframes, or its trading days (count, first and last few)."""
    where = f"the database {redact(db.url)}"
    with db.connection() as connection:
        series = connection.execute("SELECT DISTINCT symbol, timeframe FROM bars ORDER BY 1, 2").fetchall()
    symbols = sorted({s for s, _ in series})
    if symbol not in symbols:
        stored = f"it holds {', '.join(symbols)}" if symbols else "it holds no bars yet"
        return (f"no stored bars for symbol {symbol!r} in {where} ({stored}): ingest them first "
                f"(smc ingest FILE --symbol {symbol})")
    timeframes = [t for s, t in series if s == symbol]
    if timeframe not in timeframes:
        return (f"no stored {timeframe} bars for {symbol} in {where} (it holds {symbol} at "
                f"{', '.join(timeframes)}): pass --timeframe, or set SMC_TIMEFRAME")
    days = stored_trading_days(db, symbol, timeframe, calendar)
    weekday = "" if calendar.is_trading_day(day) else f" ({day:%A}: no session on the {calendar.name} calendar)"
    return (f"no stored {timeframe} bars for {symbol} on {day}{weekday} in {where}; {symbol} {timeframe} has "
            f"{_day_list(days)}")


def no_session_bars(db: Database, symbol: str, timeframe: str, day, calendar: "SessionCalendar") -> str:
    """Why a trading day's partition has no bar to compute on: none stored (``missing_day``), or
    all of them outside the session and excluded."""
    first, end = calendar.partition_bounds(day)
    stored = load_bars(db, symbol, timeframe, first, end)
    if stored.empty:
        return missing_day(db, symbol, timeframe, day, calendar)
    return (f"its {len(stored)} stored {timeframe} bars in {redact(db.url)} all lie outside the session of {day} on "
            f"the {calendar.name} calendar (excluded: SMC_OUT_OF_SESSION=exclude; see the bars partition's "
            f"session_coverage check)")


def _day_list(days: list, shown: int = 3) -> str:
    if len(days) <= 2 * shown:
        return f"{len(days)} trading day{'s' if len(days) != 1 else ''}: {', '.join(map(str, days))}"
    return (f"{len(days)} trading days, {days[0]} to {days[-1]}: first {', '.join(map(str, days[:shown]))}; "
            f"last {', '.join(map(str, days[-shown:]))}")


def register_feature_set(db: Database, catalogue: "FeatureCatalogue") -> str:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO feature_sets (version, names, catalogue) VALUES (%s, %s, %s) ON CONFLICT (version) DO NOTHING",
            (catalogue.version, catalogue.names, json.dumps(catalogue.to_json())),
        )
    return catalogue.version


def write_features(db: Database, symbol: str, timeframe: str, rows: pd.DataFrame, catalogue: "FeatureCatalogue",
                   start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Replace the feature rows of (start, end] with ``rows`` (index ts, catalogue columns)."""
    if list(rows.columns) != catalogue.names:
        raise ValueError("feature columns do not match the catalogue order")
    register_feature_set(db, catalogue)
    values = rows.to_numpy(dtype="float64")
    with db.connection() as conn:
        conn.execute("SELECT smc_prepare_time_range('features', %s, %s)", (start, end))
        conn.execute(
            "DELETE FROM features WHERE symbol = %s AND timeframe = %s AND feature_set = %s AND ts > %s AND ts <= %s",
            (symbol, timeframe, catalogue.version, start, end),
        )
        with conn.cursor().copy(
                "COPY features (symbol, timeframe, ts, feature_set, values) FROM STDIN") as copy:
            for ts, vector in zip(rows.index, values):
                copy.write_row((symbol, timeframe, ts, catalogue.version, vector.tolist()))
    return len(rows)


def read_features(db: Database, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp,
                  catalogue: "FeatureCatalogue") -> pd.DataFrame:
    """Feature rows with ts in (start, end] for ``catalogue``'s version, index ts."""
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT ts, values FROM features WHERE symbol = %s AND timeframe = %s AND feature_set = %s
               AND ts > %s AND ts <= %s ORDER BY ts""",
            (symbol, timeframe, catalogue.version, start, end),
        ).fetchall()
    index = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows], utc=True), name="ts").astype("datetime64[ns, UTC]")
    values = np.array([r[1] for r in rows], dtype="float64").reshape(len(rows), len(catalogue.names))
    return pd.DataFrame(values, index=index, columns=catalogue.names)


def feature_symbols(db: Database, timeframe: str, catalogue: "FeatureCatalogue") -> list[str]:
    """Symbols with stored feature rows of ``catalogue``'s version, sorted."""
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT DISTINCT symbol FROM features WHERE timeframe = %s AND feature_set = %s ORDER BY symbol",
            (timeframe, catalogue.version),
        ).fetchall()
    return [row[0] for row in rows]


def write_labels(db: Database, symbol: str, timeframe: str, horizon: str, labels: pd.DataFrame,
                 start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Replace the labels of one horizon in (start, end]; ``labels`` has ts and LABEL_COLUMNS."""
    with db.connection() as conn:
        conn.execute("SELECT smc_prepare_time_range('labels', %s, %s)", (start, end))
        conn.execute(
            "DELETE FROM labels WHERE symbol = %s AND timeframe = %s AND horizon = %s AND ts > %s AND ts <= %s",
            (symbol, timeframe, horizon, start, end),
        )
        with conn.cursor().copy(
                "COPY labels (symbol, timeframe, ts, horizon, label, t1, ret, barrier) FROM STDIN") as copy:
            for row in labels.itertuples(index=False):
                t1 = None if pd.isna(row.t1) else row.t1
                ret = None if pd.isna(row.ret) else float(row.ret)
                copy.write_row((symbol, timeframe, row.ts, horizon, int(row.label), t1, ret, str(row.barrier)))
    return len(labels)


def read_labels(db: Database, symbol: str, timeframe: str, horizon: str, start: pd.Timestamp,
                end: pd.Timestamp) -> pd.DataFrame:
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT ts, label, t1, ret, barrier FROM labels WHERE symbol = %s AND timeframe = %s
               AND horizon = %s AND ts > %s AND ts <= %s ORDER BY ts""",
            (symbol, timeframe, horizon, start, end),
        ).fetchall()
    frame = pd.DataFrame(rows, columns=["ts", *LABEL_COLUMNS])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["t1"] = pd.to_datetime(frame["t1"], utc=True)
    return frame


LATE_COMMIT_LOOKBACK = 1000
"""Ingests re-read behind the cursor: an id is taken before its transaction commits, so a
write may become visible after a higher id did. Re-reading is harmless (content keys)."""


def bar_changes_since(db: Database, after_ingest_id: int, timeframe: str) -> tuple[int, list[tuple[str, pd.Timestamp,
                                                                                                  pd.Timestamp]]]:
    """Writes that changed stored bars of ``timeframe`` outside Dagster runs (the service's live
    bars, ``POST /bars``, ``smc ingest``) after ingest ``after_ingest_id``: the newest ingest id
    seen, and (symbol, first bar, last bar) of each such write. A Dagster run has materialized
    its own partition already, so its writes are not listed."""
    with db.connection() as conn:
        newest = conn.execute("SELECT coalesce(max(id), %s) FROM ingest_log", (after_ingest_id,)).fetchone()[0]
        rows = conn.execute(  # ids are handed out before commit: look back a little for late commits
            """SELECT symbol, first_ts, last_ts FROM ingest_log
               WHERE id > %s AND id <= %s AND dagster_run_id IS NULL AND status = 'succeeded' AND timeframe = %s
                 AND rows_inserted + rows_updated > 0 AND first_ts IS NOT NULL ORDER BY id""",
            (after_ingest_id - LATE_COMMIT_LOOKBACK, newest, timeframe)).fetchall()
    return int(newest), [(symbol, pd.Timestamp(first), pd.Timestamp(last)) for symbol, first, last in rows]


def bars_fingerprint(db: Database, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> str:
    """What identifies the stored bars in (start, end]: how many, and the newest ingest that wrote
    one of them (every write that changes a bar gives it a newer ingest id)."""
    with db.connection() as conn:
        count, newest = conn.execute(
            """SELECT count(*), coalesce(max(ingest_id), 0) FROM bars
               WHERE symbol = %s AND timeframe = %s AND ts > %s AND ts <= %s""",
            (symbol, timeframe, start, end)).fetchone()
    return f"{count}-{newest}"
