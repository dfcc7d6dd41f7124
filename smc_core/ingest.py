"""Writing bars: binary COPY, one transaction, idempotent, with an ingest log.

Every write of a batch of bars happens in a single transaction that also records the
attempt in ``ingest_log``: either all of it lands or none of it does. New ranges are
COPYed straight into ``bars``; ranges that already hold bars go through a staging table
and one upsert that only touches rows whose values differ, so re-ingesting a file
changes nothing at all (not even row versions).

An attempt that stores nothing is logged too, as ``sql/003_ingest_log.sql`` says: a file
refused for its rows or its form gets a ``rejected`` row (its rejected rows verbatim in
``ingest_rejects``), a write that breaks off (a database error mid-ingest) a ``failed`` row,
written after the rollback in a transaction of its own; each with the error text.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import psycopg

from smc_core.bars import VALUE_COLUMNS, ParsedBars, Rejection, read_bar_file
from smc_core.db import Database
from smc_core.errors import BarFileError, ConfigError, RejectedRowsError, ResampleRefreshError
from smc_core.instruments import instrument
from smc_core.timeframe import is_daily, parse_timeframe

_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,31}$")
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_COPY_CHUNK_ROWS = 100_000
_VALUE_AND_DELTA = (*VALUE_COLUMNS, "delta")

log = logging.getLogger(__name__)


def check_symbol(symbol: str) -> str:
    """Return ``symbol`` if it is a valid instrument root (ES, NQ, 6E, …), else raise."""
    if not _SYMBOL.match(symbol or ""):
        hint = f" (did you mean {symbol.upper()!r}?)" if symbol and _SYMBOL.match(symbol.upper()) else ""
        raise ConfigError(
            f"symbol {symbol!r} is not valid: use 1–32 upper-case letters, digits, '.', '_' or '-'{hint}"
        )
    return symbol


@dataclass(frozen=True)
class WriteCounts:
    inserted: int
    updated: int
    unchanged: int


@dataclass
class IngestReport:
    """What one ingest did; also the row it left in ``ingest_log``."""

    ingest_id: int
    source: str
    symbol: str
    timeframe: str
    format: str
    rows_read: int
    rows_inserted: int
    rows_updated: int
    rows_unchanged: int
    rejections: list[Rejection] = field(default_factory=list)
    first_ts: pd.Timestamp | None = None
    last_ts: pd.Timestamp | None = None

    @property
    def rows_rejected(self) -> int:
        return len(self.rejections)

    def summary(self) -> str:
        span = f" {self.first_ts:%Y-%m-%d %H:%M} → {self.last_ts:%Y-%m-%d %H:%M} UTC" if self.first_ts is not None else ""
        return (
            f"{self.source}: {self.symbol} {self.timeframe}{span}: {self.rows_read} read, "
            f"{self.rows_inserted} inserted, {self.rows_updated} updated, {self.rows_unchanged} unchanged, "
            f"{self.rows_rejected} rejected (ingest #{self.ingest_id})"
        )


def ingest_file(db: Database, path: str | Path, symbol: str, timeframe: str, *, tz: str | None = None,
                fmt: str = "auto", skip_invalid: bool = False, dagster_run_id: str | None = None,
                partition_key: str | None = None, progress: Callable[[str], None] | None = None) -> IngestReport:
    """Validate and write one bar file atomically.

    With rejected rows and ``skip_invalid`` False no bar is written and RejectedRowsError is
    raised (the attempt is logged ``rejected``, with its rows in ``ingest_rejects``); with
    ``skip_invalid`` the valid rows are written and the rejected ones recorded in
    ``ingest_rejects``. A file that cannot be read at all raises BarFileError, logged
    ``rejected`` too. Either error carries ``ingest_id``. ``progress`` hears the phase
    ("reading", then "writing N bars"): a big file spends seconds in each. The symbol's instrument
    specification gives the zone of naive timestamps (unless ``tz``) and, for daily bars, the
    session closes they are stamped at.
    """
    check_symbol(symbol)
    width = parse_timeframe(timeframe)
    spec = instrument(symbol) if tz is None or is_daily(width) else None  # bars of any symbol can be stored
    if progress is not None:
        progress("reading")
    attempt = {"symbol": symbol, "timeframe": timeframe, "skip_invalid": skip_invalid,
               "dagster_run_id": dagster_run_id, "partition_key": partition_key}
    try:
        parsed = read_bar_file(path, fmt=fmt, tz=tz or spec.zone, timeframe=width,
                               calendar=spec.calendar() if spec else None)
    except BarFileError as error:
        log_error(db, error, "rejected", source=str(path), sha256=_sha256_if_readable(path),
                   fmt=None if fmt == "auto" else fmt, **attempt)
        raise
    if parsed.rejections and not skip_invalid:
        refused = RejectedRowsError(parsed.path, parsed.rejections)
        log_error(db, refused, "rejected", source=str(parsed.path), sha256=file_sha256(parsed.path),
                   fmt=parsed.format, frame=parsed.frame, rows_read=parsed.rows_read, rejections=parsed.rejections,
                   **attempt)
        raise refused
    if progress is not None:
        progress(f"writing {len(parsed.frame)} bars")
    return write_parsed(db, parsed, symbol, timeframe, skip_invalid=skip_invalid,
                        dagster_run_id=dagster_run_id, partition_key=partition_key)


def write_parsed(db: Database, parsed: ParsedBars, symbol: str, timeframe: str, *, skip_invalid: bool = False,
                 dagster_run_id: str | None = None, partition_key: str | None = None) -> IngestReport:
    """Write all valid bars of one parsed file and log it, in one transaction."""
    return write_logged(
        db, source=str(parsed.path), sha256=file_sha256(parsed.path), fmt=parsed.format, symbol=symbol,
        timeframe=timeframe, frame=parsed.frame, rows_read=parsed.rows_read, rejections=parsed.rejections,
        skip_invalid=skip_invalid, dagster_run_id=dagster_run_id, partition_key=partition_key,
    )


def write_logged(db: Database, *, source: str, sha256: str | None, fmt: str, symbol: str, timeframe: str,
                 frame: pd.DataFrame, rows_read: int, rejections: list[Rejection], skip_invalid: bool = False,
                 dagster_run_id: str | None = None, partition_key: str | None = None) -> IngestReport:
    """Write ``frame`` and its ``ingest_log`` / ``ingest_rejects`` rows in one transaction; when
    that transaction fails, log the attempt ``failed`` (see the module docstring) and re-raise."""
    try:
        with db.connection() as conn:
            ingest_id = conn.execute(
                """INSERT INTO ingest_log (source, source_sha256, format, symbol, timeframe, rows_read,
                                           skip_invalid, status, dagster_run_id, partition_key)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, 'succeeded', %s, %s) RETURNING id""",
                (source, sha256, fmt, symbol, timeframe, rows_read, skip_invalid, dagster_run_id, partition_key),
            ).fetchone()[0]
            counts = write_bars(conn, symbol, timeframe, frame, ingest_id)
            _copy_rejections(conn, ingest_id, rejections)
            first_ts = frame["ts"].iloc[0] if len(frame) else None
            last_ts = frame["ts"].iloc[-1] if len(frame) else None
            conn.execute(
                """UPDATE ingest_log SET finished_at = now(), first_ts = %s, last_ts = %s, rows_inserted = %s,
                          rows_updated = %s, rows_unchanged = %s, rows_rejected = %s WHERE id = %s""",
                (first_ts, last_ts, counts.inserted, counts.updated, counts.unchanged, len(rejections), ingest_id),
            )
    except Exception as error:
        log_error(db, error, "failed", source=source, sha256=sha256, fmt=fmt, symbol=symbol, timeframe=timeframe,
                   frame=frame, rows_read=rows_read, rejections=rejections, skip_invalid=skip_invalid,
                   dagster_run_id=dagster_run_id, partition_key=partition_key)
        raise
    # Stored and logged: a failed refresh must not log the ingest as failed. Ingesting the file
    # again refreshes again (unchanged rows included), so the error says to do that.
    try:
        with db.connection() as conn:
            refresh_resampled(conn, timeframe, first_ts, last_ts)
    except Exception as error:
        raise ResampleRefreshError(f"{source}: the bars were stored (ingest {ingest_id}) but the resampled "
                                   f"timeframes could not be refreshed: {str(error).strip()}; ingest the file "
                                   "again to retry") from error
    return IngestReport(ingest_id, source, symbol, timeframe, fmt, rows_read, counts.inserted, counts.updated,
                        counts.unchanged, list(rejections), first_ts, last_ts)


def refresh_resampled(conn: psycopg.Connection, timeframe: str, first_ts, last_ts) -> int:
    """Make the resampled bars (``bars_5m`` … ``bars_1h``) show bars of ``timeframe`` just stored
    with close times in [first_ts, last_ts]; call it after their transaction committed.

    Why: on TimescaleDB a bucket is materialized once, and real-time aggregation adds raw rows
    only above the last materialized bucket, so bars written into an older bucket stay unseen
    until that bucket is refreshed. Which aggregates, over which windows, is decided in SQL
    (``smc_resampled_refresh_windows``): none on the native engine, whose views need nothing.
    Returns the number of aggregates refreshed."""
    if first_ts is None or last_ts is None:
        return 0
    windows = conn.execute("SELECT aggregate, window_start, window_end FROM smc_resampled_refresh_windows(%s, %s, %s)",
                           (timeframe, first_ts, last_ts)).fetchall()
    if not windows:
        return 0
    autocommit = conn.autocommit
    if not autocommit:  # refresh_continuous_aggregate refuses to run inside a transaction block
        conn.commit()
        conn.autocommit = True
    try:
        for aggregate, start, end in windows:
            conn.execute("CALL refresh_continuous_aggregate(%s::regclass, %s::timestamptz, %s::timestamptz)",
                         (aggregate, start, end))
    finally:
        conn.autocommit = autocommit
    return len(windows)


def log_unsuccessful(db: Database, status: str, error: str, *, source: str, symbol: str, timeframe: str,
                     sha256: str | None = None, fmt: str | None = None, frame: pd.DataFrame | None = None,
                     rows_read: int = 0, rejections: Sequence[Rejection] = (), skip_invalid: bool = False,
                     dagster_run_id: str | None = None, partition_key: str | None = None) -> int:
    """Log an attempt that stored no bar (``status`` 'rejected' or 'failed') with its error and
    its rejected rows verbatim, in a transaction of its own; returns its ``ingest_log`` id.
    ``frame``: the valid bars it would have written (their time range is logged)."""
    span = (frame["ts"].min(), frame["ts"].max()) if frame is not None and len(frame) else (None, None)
    with db.connection() as conn:
        ingest_id = conn.execute(
            """INSERT INTO ingest_log (finished_at, source, source_sha256, format, symbol, timeframe, first_ts, last_ts,
                                       rows_read, rows_rejected, skip_invalid, status, error, dagster_run_id,
                                       partition_key)
               VALUES (now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (source, sha256, fmt, symbol, timeframe, *span, rows_read, len(rejections), skip_invalid, status, error,
             dagster_run_id, partition_key),
        ).fetchone()[0]
        _copy_rejections(conn, ingest_id, rejections)
    return int(ingest_id)


def log_error(db: Database, error: Exception, status: str, **attempt) -> None:
    """Log the attempt ``error`` ended (its id on ``error.ingest_id``). A database too broken to
    take the row never hides the error itself: it is noted on it instead."""
    text = str(error) if status == "rejected" else f"{type(error).__name__}: {error}".strip()
    try:
        error.ingest_id = log_unsuccessful(db, status, text, **attempt)
    except Exception as unlogged:
        log.warning("ingest of %s ended %s and could not be logged: %s", attempt["source"], status, unlogged)
        error.add_note(f"this {status} attempt could not be written to ingest_log either: {unlogged}")


def _copy_rejections(conn: psycopg.Connection, ingest_id: int, rejections: Sequence[Rejection]) -> None:
    if rejections:
        with conn.cursor().copy("COPY ingest_rejects (ingest_id, source, line, reason, raw) FROM STDIN") as copy:
            for rejection in rejections:
                copy.write_row((ingest_id, rejection.path, rejection.line, rejection.reason, rejection.raw))


def write_bars(conn: psycopg.Connection, symbol: str, timeframe: str, frame: pd.DataFrame,
               ingest_id: int) -> WriteCounts:
    """Upsert validated bars inside the caller's transaction.

    Writers of the same series are serialised by an advisory lock; a range with no bars
    yet is COPYed directly, otherwise through a staging table and an upsert that skips
    identical rows.
    """
    n = len(frame)
    if n == 0:
        return WriteCounts(0, 0, 0)
    lo, hi = frame["ts"].iloc[0], frame["ts"].iloc[-1]
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"bars:{symbol}:{timeframe}",))
    conn.execute("SELECT smc_prepare_time_range('bars', %s, %s)", (lo, hi))
    occupied = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM bars WHERE symbol = %s AND timeframe = %s AND ts BETWEEN %s AND %s)",
        (symbol, timeframe, lo, hi),
    ).fetchone()[0]
    has_delta = bool(frame["delta"].notna().any())
    if not occupied:
        columns = [("symbol", _text(symbol)), ("timeframe", _text(timeframe)), *_bar_fields(frame, has_delta),
                   ("ingest_id", ("int8", ingest_id))]
        _copy_binary(conn, "bars", columns, n)
        return WriteCounts(n, 0, 0)

    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS bars_stage (
               ts timestamptz, open float8, high float8, low float8, close float8, volume float8, delta float8
           ) ON COMMIT DELETE ROWS"""
    )
    _copy_binary(conn, "bars_stage", _bar_fields(frame, has_delta), n)
    assignments = ", ".join(f"{c} = EXCLUDED.{c}" for c in _VALUE_AND_DELTA)
    current = ", ".join(f"bars.{c}" for c in _VALUE_AND_DELTA)
    incoming = ", ".join(f"EXCLUDED.{c}" for c in _VALUE_AND_DELTA)
    # RETURNING cannot tell inserts from updates on a partitioned table (no xmax), so
    # count the keys that already exist first; the upsert then reports rows it wrote.
    existing = conn.execute(
        """SELECT count(*) FROM bars_stage s JOIN bars b
           ON b.symbol = %s AND b.timeframe = %s AND b.ts = s.ts""",
        (symbol, timeframe),
    ).fetchone()[0]
    _record_revisions(conn, symbol, timeframe, ingest_id, "file_correction", applied=True)
    written = conn.execute(
        f"""WITH written AS (
                INSERT INTO bars (symbol, timeframe, ts, {', '.join(_VALUE_AND_DELTA)}, ingest_id)
                SELECT %(symbol)s, %(timeframe)s, ts, {', '.join(_VALUE_AND_DELTA)}, %(ingest_id)s FROM bars_stage
                ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET {assignments}, ingest_id = EXCLUDED.ingest_id
                WHERE ({current}) IS DISTINCT FROM ({incoming})
                RETURNING 1
            )
            SELECT count(*) FROM written""",
        {"symbol": symbol, "timeframe": timeframe, "ingest_id": ingest_id},
    ).fetchone()[0]
    inserted = n - existing
    updated = written - inserted
    return WriteCounts(inserted, updated, n - inserted - updated)


@dataclass(frozen=True)
class LiveCounts:
    """What one write of received bars did: new bars stored, identical ones left alone,
    differing ones kept as conflicts (never written over the stored bar)."""

    inserted: int
    unchanged: int
    conflicting: int
    ingest_id: int


def write_live_bars(conn: psycopg.Connection, symbol: str, timeframe: str, frame: pd.DataFrame,
                    source: str) -> LiveCounts:
    """Store bars a caller sent (``frame``: ts-sorted, unique, validated) inside the caller's transaction.

    Why not an upsert: the files a user ingests are the authority. A received bar only fills
    a gap; one that differs from the stored bar is recorded in ``bar_revisions`` and counted.
    """
    n = len(frame)
    ingest_id = conn.execute(
        """INSERT INTO ingest_log (source, format, symbol, timeframe, rows_read, status, first_ts, last_ts)
           VALUES (%s, 'live', %s, %s, %s, 'succeeded', %s, %s) RETURNING id""",
        (source, symbol, timeframe, n, frame["ts"].iloc[0] if n else None, frame["ts"].iloc[-1] if n else None),
    ).fetchone()[0]
    if n == 0:
        return LiveCounts(0, 0, 0, ingest_id)
    lo, hi = frame["ts"].iloc[0], frame["ts"].iloc[-1]
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"bars:{symbol}:{timeframe}",))
    conn.execute("SELECT smc_prepare_time_range('bars', %s, %s)", (lo, hi))
    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS bars_stage (
               ts timestamptz, open float8, high float8, low float8, close float8, volume float8, delta float8
           ) ON COMMIT DELETE ROWS"""
    )
    conn.execute("DELETE FROM bars_stage")  # an earlier statement of this transaction may have staged rows
    _copy_binary(conn, "bars_stage", _bar_fields(frame, bool(frame["delta"].notna().any())), n)
    conflicting = _record_revisions(conn, symbol, timeframe, ingest_id, "live_conflict", applied=False,
                                    source=source)
    inserted = conn.execute(
        f"""WITH written AS (
                INSERT INTO bars (symbol, timeframe, ts, {', '.join(_VALUE_AND_DELTA)}, ingest_id)
                SELECT %s, %s, ts, {', '.join(_VALUE_AND_DELTA)}, %s FROM bars_stage
                ON CONFLICT (symbol, timeframe, ts) DO NOTHING
                RETURNING 1
            )
            SELECT count(*) FROM written""",
        (symbol, timeframe, ingest_id),
    ).fetchone()[0]
    unchanged = n - inserted - conflicting
    conn.execute(
        """UPDATE ingest_log SET finished_at = now(), rows_inserted = %s, rows_unchanged = %s, rows_conflicting = %s
           WHERE id = %s""", (inserted, unchanged, conflicting, ingest_id))
    return LiveCounts(inserted, unchanged, conflicting, ingest_id)


def _record_revisions(conn: psycopg.Connection, symbol: str, timeframe: str, ingest_id: int, kind: str, *,
                      applied: bool, source: str | None = None) -> int:
    """Keep every staged bar that differs from the stored one in ``bar_revisions``; returns how many differ.

    ``source`` defaults to the ingest's own (its file)."""
    values = ", ".join([f"b.{c} AS stored_{c}" for c in _VALUE_AND_DELTA]
                       + [f"s.{c} AS incoming_{c}" for c in _VALUE_AND_DELTA])
    columns = ", ".join([f"stored_{c}" for c in _VALUE_AND_DELTA] + [f"incoming_{c}" for c in _VALUE_AND_DELTA])
    stored = ", ".join(f"b.{c}" for c in _VALUE_AND_DELTA)
    staged = ", ".join(f"s.{c}" for c in _VALUE_AND_DELTA)
    return int(conn.execute(
        f"""WITH differing AS (
                SELECT b.ts, b.ingest_id AS stored_ingest_id, {values}
                FROM bars_stage s JOIN bars b ON b.symbol = %(symbol)s AND b.timeframe = %(timeframe)s AND b.ts = s.ts
                WHERE ({stored}) IS DISTINCT FROM ({staged})
            ), recorded AS (
                INSERT INTO bar_revisions (symbol, timeframe, ts, kind, applied, source, stored_ingest_id,
                                           incoming_ingest_id, {columns})
                SELECT %(symbol)s, %(timeframe)s, ts, %(kind)s, %(applied)s,
                       coalesce(%(source)s, (SELECT source FROM ingest_log WHERE id = %(ingest_id)s)),
                       stored_ingest_id, %(ingest_id)s, {columns}
                FROM differing
                ON CONFLICT DO NOTHING
                RETURNING 1
            )
            SELECT count(*) FROM differing""",
        {"symbol": symbol, "timeframe": timeframe, "kind": kind, "applied": applied, "source": source,
         "ingest_id": ingest_id},
    ).fetchone()[0])


def _sha256_if_readable(path: str | Path) -> str | None:
    try:
        return file_sha256(Path(path))
    except OSError:
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- binary COPY --------------------------------------------------------------------
# PostgreSQL's binary COPY format is fixed-width for our columns, so whole frames are
# encoded with one numpy structured array instead of a Python loop per row.

def _text(value: str) -> tuple[str, bytes]:
    return ("text", value.encode("utf-8"))


def _bar_fields(frame: pd.DataFrame, has_delta: bool) -> list[tuple[str, tuple[str, object]]]:
    stamps = pd.DatetimeIndex(frame["ts"]).as_unit("us").asi8 - _PG_EPOCH_US
    fields = [("ts", ("int8", stamps))]
    fields += [(c, ("float8", frame[c].to_numpy(dtype="float64"))) for c in VALUE_COLUMNS]
    fields.append(("delta", ("float8", frame["delta"].to_numpy(dtype="float64")) if has_delta else ("null", None)))
    return fields


def _copy_binary(conn: psycopg.Connection, table: str, columns: list[tuple[str, tuple[str, object]]], n: int) -> None:
    layout = [("field_count", ">i2")]
    for i, (_, (kind, value)) in enumerate(columns):
        layout.append((f"len{i}", ">i4"))
        if kind == "text":
            layout.append((f"val{i}", f"S{len(value)}"))
        elif kind in ("int8", "float8"):
            layout.append((f"val{i}", ">i8" if kind == "int8" else ">f8"))
    names = ", ".join(name for name, _ in columns)
    with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN (FORMAT binary)") as copy:
        copy.write(_COPY_HEADER)
        for start in range(0, n, _COPY_CHUNK_ROWS):
            stop = min(start + _COPY_CHUNK_ROWS, n)
            rows = np.empty(stop - start, dtype=np.dtype(layout))
            rows["field_count"] = len(columns)
            for i, (_, (kind, value)) in enumerate(columns):
                if kind == "null":
                    rows[f"len{i}"] = -1
                    continue
                if kind == "text":
                    rows[f"len{i}"] = len(value)
                    rows[f"val{i}"] = value
                    continue
                rows[f"len{i}"] = 8
                rows[f"val{i}"] = value if np.isscalar(value) else value[start:stop]
            copy.write(rows.tobytes())
        copy.write(_COPY_TRAILER)

