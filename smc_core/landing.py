"""The landing folder: where NinjaTrader exports and other bar files are dropped.

A manifest table (``landing_files``) remembers each file's size, modification time,
hash and the trading days it covers, so the file sensor can tell new or changed files
from known ones without re-reading them, and a partition can find its files at once.

Symbol of a file: the folder it sits in (``landing/ES/any-name.csv``) or, at the top
level, the leading token of its name (NinjaTrader's ``ES 03-25.Last.txt`` → ``ES``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from smc_core.bars import read_bar_file
from smc_core.calendar import SessionCalendar
from smc_core.db import Database
from smc_core.errors import BarFileError, RejectedRowsError, SmcError
from smc_core.ingest import IngestReport, check_symbol, file_sha256, log_error, write_logged
from smc_core.instruments import instrument
from smc_core.timeframe import parse_timeframe

BAR_FILE_SUFFIXES = (".txt", ".csv", ".parquet")
_LEADING_TOKEN = re.compile(r"^([A-Za-z0-9]+)")


@dataclass(frozen=True)
class LandingFile:
    path: Path
    size: int
    mtime_ns: int
    sha256: str
    format: str
    symbol: str
    timeframe: str
    first_ts: pd.Timestamp | None
    last_ts: pd.Timestamp | None
    days: tuple[date, ...]


@dataclass
class ScanResult:
    files: list[LandingFile]
    """Every readable bar file in the folder."""
    problems: dict[str, str]
    """Files that could not be used: path → one-line reason."""


def symbol_of(path: Path, landing_dir: Path) -> str:
    """The instrument a landing file belongs to (see module docstring)."""
    relative = path.relative_to(landing_dir)
    if len(relative.parts) > 1:
        return check_symbol(relative.parts[0])
    match = _LEADING_TOKEN.match(path.name)
    if not match:
        raise SmcError(f"{path}: cannot tell the symbol from the file name; put it in a folder named after the symbol")
    return check_symbol(match.group(1).upper())


def scan(db: Database, landing_dir: Path, *, timeframe: str, tz: str | None = None) -> ScanResult:
    """Bring the manifest up to date with the folder; unchanged files are not re-read. Each
    file is read with its symbol's instrument specification (zone of naive timestamps unless
    ``tz``, session calendar); a file of an unknown symbol is a problem naming the file to edit."""
    width = parse_timeframe(timeframe)
    if not landing_dir.is_dir():
        return ScanResult([], {str(landing_dir): f"{landing_dir}: landing folder does not exist"})
    with db.connection() as conn:
        known = {
            row[0]: row for row in conn.execute(
                "SELECT path, size, mtime_ns, sha256, format, symbol, timeframe, first_ts, last_ts, days FROM landing_files"
            ).fetchall()
        }
    files: list[LandingFile] = []
    problems: dict[str, str] = {}
    for path in sorted(p for p in landing_dir.rglob("*") if p.is_file() and p.suffix.lower() in BAR_FILE_SUFFIXES):
        stat = path.stat()
        row = known.get(str(path))
        if row and row[1] == stat.st_size and row[2] == stat.st_mtime_ns and row[6] == timeframe:
            files.append(_from_row(row))
            continue
        try:
            symbol = symbol_of(path, landing_dir)
            spec = instrument(symbol)
            calendar = spec.calendar()
            parsed = read_bar_file(path, tz=tz or spec.zone, timeframe=width, calendar=calendar)
        except SmcError as exc:
            problems[str(path)] = str(exc)
            continue
        digest = file_sha256(path)
        ts = parsed.frame["ts"]
        days = tuple(sorted({d.item() for d in np.unique(calendar.trading_day_of(ts))})) if len(ts) else ()
        entry = LandingFile(path, stat.st_size, stat.st_mtime_ns, digest, parsed.format, symbol, timeframe,
                            ts.iloc[0] if len(ts) else None, ts.iloc[-1] if len(ts) else None, days)
        files.append(entry)
        _remember(db, entry)
    return ScanResult(files, problems)


def files_for(db: Database, symbol: str, day: date, timeframe: str) -> list[LandingFile]:
    """Known landing files of ``symbol`` that cover trading day ``day``, oldest first."""
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT path, size, mtime_ns, sha256, format, symbol, timeframe, first_ts, last_ts, days
               FROM landing_files WHERE symbol = %s AND timeframe = %s AND %s = ANY(days)
               ORDER BY mtime_ns, path""",
            (symbol, timeframe, day),
        ).fetchall()
    return [_from_row(row) for row in rows if Path(row[0]).exists()]


def _remember(db: Database, entry: LandingFile) -> None:
    with db.connection() as conn:
        conn.execute(
            """INSERT INTO landing_files (path, size, mtime_ns, sha256, format, symbol, timeframe, first_ts, last_ts, days)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (path) DO UPDATE SET size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns,
                   sha256 = EXCLUDED.sha256, format = EXCLUDED.format, symbol = EXCLUDED.symbol,
                   timeframe = EXCLUDED.timeframe, first_ts = EXCLUDED.first_ts, last_ts = EXCLUDED.last_ts,
                   days = EXCLUDED.days, seen_at = now()""",
            (str(entry.path), entry.size, entry.mtime_ns, entry.sha256, entry.format, entry.symbol, entry.timeframe,
             entry.first_ts, entry.last_ts, list(entry.days)),
        )


def _from_row(row) -> LandingFile:
    path, size, mtime_ns, sha256, fmt, symbol, timeframe, first_ts, last_ts, days = row
    return LandingFile(Path(path), size, mtime_ns, sha256, fmt, symbol, timeframe,
                       pd.Timestamp(first_ts) if first_ts else None, pd.Timestamp(last_ts) if last_ts else None,
                       tuple(days))


@dataclass
class DayIngest:
    """Result of loading one trading day of one symbol from its landing files."""

    report: IngestReport
    files: list[Path]
    duplicate_bars: int
    """Bars present in more than one file with identical values (overlapping exports)."""
    conflicting_bars: int
    """Bars present in more than one file with different values; the newest file wins."""
    conflict_examples: list[str]


def ingest_trading_day(db: Database, files: list[LandingFile], *, symbol: str, day: date, timeframe: str, tz: str,
                       calendar: SessionCalendar, skip_invalid: bool = False, dagster_run_id: str | None = None,
                       partition_key: str | None = None) -> DayIngest:
    """Write the bars of trading day ``day`` found in ``files`` in one transaction.

    Any rejected row in a contributing file stops the whole day unless ``skip_invalid`` (the
    attempt is logged ``rejected``, as ``ingest_file`` does).
    Where files overlap, identical bars are counted and conflicting ones resolved in
    favour of the most recently modified file, and reported.
    """
    width = parse_timeframe(timeframe)
    source = ";".join(str(f.path) for f in files)
    attempt = {"source": source, "fmt": "+".join(sorted({f.format for f in files})), "symbol": symbol,
               "timeframe": timeframe, "skip_invalid": skip_invalid, "dagster_run_id": dagster_run_id,
               "partition_key": partition_key}
    frames, rejections, rows_read = [], [], 0
    for order, entry in enumerate(files):
        try:
            parsed = read_bar_file(entry.path, fmt=entry.format, tz=tz, timeframe=width, calendar=calendar)
        except BarFileError as error:  # the file changed since the scan and cannot be read any more
            log_error(db, error, "rejected", **attempt)
            raise
        if parsed.rejections and not skip_invalid:
            refused = RejectedRowsError(entry.path, parsed.rejections)
            log_error(db, refused, "rejected", frame=parsed.frame, rows_read=parsed.rows_read,
                      rejections=parsed.rejections, **attempt)
            raise refused
        in_day = calendar.trading_day_of(parsed.frame["ts"]) == np.datetime64(day, "D")
        frame = parsed.frame[in_day].assign(_order=order)
        frames.append(frame)
        rows_read += int(in_day.sum())
        rejections.extend(parsed.rejections)
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    duplicates = conflicts = 0
    examples: list[str] = []
    if len(merged):
        merged = merged.sort_values(["ts", "_order"], kind="stable")
        repeated = merged.duplicated("ts", keep=False)
        if repeated.any():
            groups = merged[repeated].groupby("ts")
            distinct = groups[["open", "high", "low", "close", "volume", "delta"]].nunique(dropna=False).max(axis=1)
            conflicting = distinct > 1
            conflicts = int(conflicting.sum())
            duplicates = int((groups.size() - 1)[~conflicting].sum())
            examples = [f"{ts.isoformat()}" for ts in distinct[distinct > 1].index[:5]]
        merged = merged.drop_duplicates("ts", keep="last").drop(columns="_order").reset_index(drop=True)
    report = write_logged(db, sha256=None, frame=merged, rows_read=rows_read, rejections=rejections, **attempt)
    return DayIngest(report, [f.path for f in files], duplicates, conflicts, examples)
