"""Reading and validating OHLCV bar files: NinjaTrader exports, generic CSV and Parquet.

A file is parsed into a frame of valid bars (UTC close times, sorted) plus a list of
rejected rows, each with its file, line and reason. Nothing is coerced: a value that is
not a finite number, an impossible OHLC relation, a negative volume, an unparseable or
duplicate timestamp is a rejection, never a silent fix; so is a text file's last line when the
file does not end with a line end (the line may be cut inside a number). The caller decides
what to do with rejections (the default ingest writes nothing when there are any).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from smc_core.calendar import SessionCalendar, zone
from smc_core.errors import BarFileError
from smc_core.timeframe import format_timeframe, is_daily, off_grid

PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = (*PRICE_COLUMNS, "volume")
FORMATS = ("ninjatrader", "csv", "parquet")
NINJATRADER_FIELDS = ("ts", *VALUE_COLUMNS)
NINJATRADER_TIMESTAMP = "%Y%m%d %H%M%S"

_NINJATRADER_LINE = re.compile(r"^\d{8} \d{6};")
_NINJATRADER_WRONG_DELIMITER = re.compile(r"^\d{8} \d{6}([,\t|])")
_TS_ALIASES = ("ts", "time", "timestamp", "datetime", "date_time", "time_utc")
_HAS_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)
_MAX_FIELDS = 8  # a longer line is reported by the parser with its line number


@dataclass(frozen=True)
class Rejection:
    """One row that failed validation."""

    path: str
    line: int
    reason: str
    raw: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ParsedBars:
    """The valid bars of one file and everything that was rejected."""

    path: Path
    format: str
    frame: pd.DataFrame
    """Columns ts (UTC), open, high, low, close, volume, delta (NaN when the file has none)."""
    lines: np.ndarray
    """Source line (row number for Parquet) of each valid bar."""
    rejections: list[Rejection] = field(default_factory=list)
    rows_read: int = 0
    has_delta: bool = False


# --- format detection ---------------------------------------------------------------

def detect_format(path: Path) -> str:
    """Which of FORMATS ``path`` holds, from its content; BarFileError when none fits."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if head[:4] == b"PAR1":
        return "parquet"
    if not head.strip():
        raise BarFileError(path, "file is empty")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BarFileError(path, "not a text, CSV or Parquet file (cannot decode as UTF-8)") from None
    line_number, first = _first_content_line(text)
    if _NINJATRADER_LINE.match(first):
        return "ninjatrader"
    wrong = _NINJATRADER_WRONG_DELIMITER.match(first)
    if wrong:
        raise BarFileError(
            path, f"wrong delimiter {wrong.group(1)!r}: NinjaTrader exports separate fields with ';' "
            "(yyyyMMdd HHmmss;open;high;low;close;volume)", line_number)
    for delimiter in (",", ";", "\t", "|"):
        header = [c.strip().lower() for c in first.split(delimiter)]
        if len(header) > 1 and _looks_like_header(header):
            if delimiter != ",":
                raise BarFileError(path, f"wrong delimiter {delimiter!r}: CSV bar files must be comma-separated",
                                   line_number)
            problem = _header_problem(header)
            if problem:
                raise BarFileError(path, f"{problem}; header has {', '.join(header)}", line_number)
            return "csv"
    raise BarFileError(
        path,
        f"unknown format: {first[:60]!r} is neither a NinjaTrader export line "
        "(yyyyMMdd HHmmss;open;high;low;close;volume) nor a CSV header (ts,open,high,low,close,volume[,delta])",
        line_number,
    )


def _first_content_line(text: str) -> tuple[int, str]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            return number, line.strip()
    return 1, ""


def _looks_like_header(header: list[str]) -> bool:
    return any(name in header for name in (*_TS_ALIASES, *VALUE_COLUMNS))


def _header_problem(header: list[str]) -> str | None:
    missing = [c for c in VALUE_COLUMNS if c not in header]
    if not any(alias in header for alias in _TS_ALIASES):
        missing.insert(0, "ts")
    if missing:
        return f"missing column(s) {', '.join(missing)}"
    return None


# --- reading ------------------------------------------------------------------------

def read_bar_file(path: str | Path, *, fmt: str = "auto", tz: str = "America/Chicago",
                  timeframe: timedelta | None = None, calendar: SessionCalendar | None = None) -> ParsedBars:
    """Parse and validate ``path``. Naive timestamps are read in exchange time zone ``tz``.
    Daily bars are restamped at their session's close on ``calendar`` (DESIGN §3: a bar's
    ``ts`` is when its values became known), whether the file gives a date or a time.

    Raises BarFileError when the file cannot be read at all; row problems are returned
    as rejections.
    """
    path = Path(path)
    zone(tz)
    if not path.exists():
        raise BarFileError(path, "no such file")
    if not path.is_file():
        raise BarFileError(path, "not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise BarFileError(path, f"cannot read: {exc.strerror}") from None
    if path.stat().st_size == 0:
        raise BarFileError(path, "file is empty")
    if fmt == "auto":
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise BarFileError(path, f"unknown format {fmt!r}: use one of auto, {', '.join(FORMATS)}")

    if fmt == "ninjatrader":
        raw, lines, problems = _read_ninjatrader(path)
    elif fmt == "csv":
        raw, lines, problems = _read_csv(path)
    else:
        raw, lines, problems = _read_parquet(path)
    if len(raw) == 0 and not problems:
        raise BarFileError(path, "file has no bars")
    if fmt != "parquet" and len(raw) and not _ends_with_line_end(path):
        problems[len(raw) - 1].append(UNTERMINATED_LINE)
    return _validate(path, fmt, raw, lines, problems, tz, timeframe, calendar)


UNTERMINATED_LINE = ("the file ends inside this line (no line end after it): it may be cut off mid-value, as when an "
                     "export is still being written or a copy was interrupted; complete files end every line with "
                     "a newline")


def _ends_with_line_end(path: Path) -> bool:
    """Whether a text file's last byte ends a line. Why it matters: a line cut inside its last
    number ("…;1234" cut to "…;12") still parses as a valid bar, so the missing line end is
    the only trace of the cut."""
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) in (b"\n", b"\r")


def _read_ninjatrader(path: Path) -> tuple[pd.DataFrame, np.ndarray, defaultdict[int, list[str]]]:
    """Clean exports take a fast typed read; anything irregular is re-read as text so
    each problem can be reported with its line and original value."""
    fast = _read_ninjatrader_typed(path)
    if fast is not None:
        return fast
    try:
        table = pd.read_csv(
            path, sep=";", header=None, names=range(_MAX_FIELDS), dtype=str, keep_default_na=False,
            skip_blank_lines=False, engine="c", encoding="utf-8-sig",
        )
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc, expected=len(NINJATRADER_FIELDS)) from None
    except UnicodeDecodeError:
        raise BarFileError(path, "cannot decode as UTF-8") from None
    lines = np.arange(1, len(table) + 1)
    blank = (table == "").all(axis=1).to_numpy()
    table, lines = table[~blank], lines[~blank]
    extra = (table.iloc[:, len(NINJATRADER_FIELDS):] != "").any(axis=1).to_numpy()
    raw = table.iloc[:, : len(NINJATRADER_FIELDS)].copy()
    raw.columns = list(NINJATRADER_FIELDS)
    raw["delta"] = ""
    problems = _empty_problems()
    field_counts = (table != "").sum(axis=1).to_numpy()
    for i in np.flatnonzero(extra):
        problems[i].append(f"expected {len(NINJATRADER_FIELDS)} ';'-separated fields, found {field_counts[i]}")
    raw.attrs["ts_format"] = NINJATRADER_TIMESTAMP
    return raw.reset_index(drop=True), lines, problems


def _read_ninjatrader_typed(path: Path) -> tuple[pd.DataFrame, np.ndarray, defaultdict[int, list[str]]] | None:
    numeric = {name: "float64" for name in VALUE_COLUMNS}
    try:
        raw = pd.read_csv(path, sep=";", header=None, names=list(NINJATRADER_FIELDS), dtype={"ts": str, **numeric},
                          na_filter=False, skip_blank_lines=False, engine="c", encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    if not np.isfinite(raw[list(VALUE_COLUMNS)].to_numpy()).all():
        return None
    raw["delta"] = np.nan
    raw.attrs["ts_format"] = NINJATRADER_TIMESTAMP
    return raw, np.arange(1, len(raw) + 1), _empty_problems()


def _read_csv(path: Path) -> tuple[pd.DataFrame, np.ndarray, defaultdict[int, list[str]]]:
    try:
        table = pd.read_csv(path, sep=",", dtype=str, keep_default_na=False, skip_blank_lines=False,
                            engine="c", encoding="utf-8-sig")
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc, expected=None) from None
    except pd.errors.EmptyDataError:
        raise BarFileError(path, "file is empty") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    raw = _canonical_columns(path, table)
    lines = np.arange(2, len(raw) + 2)
    blank = (table == "").all(axis=1).to_numpy()
    raw, lines = raw[~blank].reset_index(drop=True), lines[~blank]
    return raw, lines, _empty_problems()


def _read_parquet(path: Path) -> tuple[pd.DataFrame, np.ndarray, defaultdict[int, list[str]]]:
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise BarFileError(path, f"cannot read Parquet: {exc}") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    raw = _canonical_columns(path, table)
    return raw.reset_index(drop=True), np.arange(1, len(raw) + 1), _empty_problems()


def _canonical_columns(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    problem = _header_problem(list(table.columns))
    if problem:
        raise BarFileError(path, f"{problem}; header has {', '.join(map(str, table.columns))}", 1)
    ts_column = next(alias for alias in _TS_ALIASES if alias in table.columns)
    raw = pd.DataFrame({"ts": table[ts_column]})
    for column in VALUE_COLUMNS:
        raw[column] = table[column]
    raw["delta"] = table["delta"] if "delta" in table.columns else ""
    raw.attrs["has_delta"] = "delta" in table.columns
    return raw


def _parser_error(path: Path, exc: Exception, expected: int | None) -> BarFileError:
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if match:
        wanted = expected if expected is not None else int(match.group(1))
        return BarFileError(path, f"expected {wanted} fields, found {match.group(3)}", int(match.group(2)))
    return BarFileError(path, f"cannot parse: {exc}")


RECORD_FIELDS = {"time_utc": "ts", "o": "open", "h": "high", "l": "low", "c": "close", "volume": "volume",
                 "delta": "delta"}
"""A bar as JSON (the /predict bar's field names) → the file columns."""


def parse_records(records: list, source: str, timeframe: timedelta | None = None) -> ParsedBars:
    """Validate bars sent as JSON objects exactly as a file's rows are validated; a rejection's
    ``line`` is the record's index. Naive times are UTC (as in /predict); ``delta`` may be
    absent on any bar."""
    problems = _empty_problems()
    columns: dict[str, list] = {column: [] for column in RECORD_FIELDS.values()}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            problems[index].append(f"a bar must be an object with {', '.join(RECORD_FIELDS)}")
            record = {}
        for field, column in RECORD_FIELDS.items():
            value = record.get(field)
            columns[column].append("" if value is None or isinstance(value, bool) else str(value))
    deltas = pd.to_numeric(pd.Series(columns.pop("delta"), dtype=object).replace("", np.nan), errors="coerce")
    for index, (text, value) in enumerate(zip(records, deltas.to_numpy(dtype="float64"))):
        given = text.get("delta") if isinstance(text, dict) else None
        if given is not None and not np.isfinite(value):
            problems[index].append(f"delta is not a finite number: {given!r}")
    raw = pd.DataFrame(columns, dtype=object)
    parsed = _validate(Path(source), "records", raw, np.arange(len(records)), problems, "UTC", timeframe)
    parsed.frame["delta"] = deltas.to_numpy(dtype="float64")[parsed.lines]
    parsed.has_delta = bool(parsed.frame["delta"].notna().any())
    return parsed


def _empty_problems() -> defaultdict[int, list[str]]:
    """Row position → reasons; only rows with problems get an entry, so a clean
    million-row file allocates nothing here."""
    return defaultdict(list)


# --- validation ---------------------------------------------------------------------

def _validate(path: Path, fmt: str, raw: pd.DataFrame, lines: np.ndarray, problems: defaultdict[int, list[str]],
              tz: str, timeframe: timedelta | None, calendar: SessionCalendar | None = None) -> ParsedBars:
    n = len(raw)
    has_delta = bool(raw.attrs.get("has_delta", False))
    ts = _parse_timestamps(raw["ts"], raw.attrs.get("ts_format"), tz, problems)
    if calendar is not None and timeframe is not None and is_daily(timeframe):
        ts = _at_session_close(ts, calendar)

    values: dict[str, np.ndarray] = {}
    for column in VALUE_COLUMNS + (("delta",) if has_delta else ()):
        values[column] = _parse_numbers(raw[column], column, problems)

    o, h, l, c, v = (values[k] for k in VALUE_COLUMNS)
    with np.errstate(invalid="ignore"):
        checks = [
            (h < np.maximum(o, c), lambda i: f"high {h[i]:g} is below max(open, close) {max(o[i], c[i]):g}"),
            (l > np.minimum(o, c), lambda i: f"low {l[i]:g} is above min(open, close) {min(o[i], c[i]):g}"),
            (v < 0, lambda i: f"volume {v[i]:g} is negative"),
        ]
    for mask, describe in checks:
        for i in np.flatnonzero(mask):
            problems[i].append(describe(i))

    if timeframe is not None:
        stamps = ts.as_unit("ns").asi8
        for i in np.flatnonzero(~np.isnat(ts.values) & off_grid(stamps, timeframe)):
            problems[i].append(f"timestamp {ts[i].isoformat()} is not on the {format_timeframe(timeframe)} bar grid")

    _reject_duplicates(ts, lines, problems)

    bad = np.zeros(n, dtype=bool)
    bad[[i for i, reasons in problems.items() if reasons]] = True
    rejections: list[Rejection] = []
    if bad.any():
        raw_lines = _raw_lines(path, fmt, raw, lines[bad])
        rejections = [
            Rejection(str(path), int(lines[i]), "; ".join(problems[i]), raw_lines.get(int(lines[i]), ""))
            for i in np.flatnonzero(bad)
        ]
    keep = ~bad
    frame = pd.DataFrame({
        "ts": ts[keep],
        **{k: values[k][keep] for k in VALUE_COLUMNS},
        "delta": values["delta"][keep] if has_delta else np.full(int(keep.sum()), np.nan),
    })
    order = np.argsort(frame["ts"].values, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    return ParsedBars(path, fmt, frame, lines[keep][order], rejections, rows_read=n, has_delta=has_delta)


def _at_session_close(ts: pd.DatetimeIndex, calendar: SessionCalendar) -> pd.DatetimeIndex:
    """Daily stamps moved to their session's close; a stamp that names no session (a date
    without one) is kept, and the coverage check counts it as outside every session."""
    valid = ~np.isnat(ts.values)
    stamps = ts.as_unit("ns").asi8.copy()
    if valid.any():
        closes = calendar.stamp_sessions(ts[valid])
        named = closes != np.iinfo(np.int64).min
        stamps[np.flatnonzero(valid)[named]] = closes[named]
    return pd.DatetimeIndex(stamps.view("M8[ns]")).tz_localize("UTC").where(valid)


def _parse_numbers(column: pd.Series, name: str, problems: defaultdict[int, list[str]]) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column.dtype):
        numbers = column.to_numpy(dtype="float64", na_value=np.nan)
        text = None
    else:
        text = column.astype(str).str.strip()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(numbers)
    for i in np.flatnonzero(bad):
        shown = text.iat[i] if text is not None else repr(numbers[i])
        if shown == "":
            problems[i].append(f"{name} is missing")
        elif np.isnan(numbers[i]) and text is not None and shown.lower() not in {"nan", "-nan", "+nan"}:
            problems[i].append(f"{name} is not a number: {shown!r}")
        else:
            problems[i].append(f"{name} is not finite: {shown!r}")
    return numbers


def _parse_timestamps(column: pd.Series, fmt: str | None, tz: str, problems: defaultdict[int, list[str]]) -> pd.DatetimeIndex:
    """UTC timestamps; values with an explicit offset keep it, naive ones are read in ``tz``."""
    n = len(column)
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(column).tz_convert("UTC").as_unit("ns")
    if pd.api.types.is_datetime64_dtype(column.dtype):
        return _localize(pd.DatetimeIndex(column).as_unit("ns"), tz, problems)
    text = column.astype(str).str.strip()
    result = pd.DatetimeIndex(np.full(n, np.datetime64("NaT", "ns")), tz="UTC")
    # Formats with a fixed pattern (NinjaTrader) never carry an offset.
    aware = np.zeros(n, dtype=bool) if fmt else text.str.contains(_HAS_OFFSET, na=False).to_numpy()
    if aware.any():
        parsed = pd.to_datetime(text[aware], format="ISO8601", errors="coerce", utc=True)
        result = _assign(result, aware, pd.DatetimeIndex(parsed).as_unit("ns"))
    naive = ~aware
    if naive.any():
        if fmt == NINJATRADER_TIMESTAMP:
            parsed = _parse_compact(column[naive])
        elif fmt:
            parsed = pd.to_datetime(text[naive], format=fmt, errors="coerce")
        else:
            parsed = pd.to_datetime(text[naive], format="ISO8601", errors="coerce")
        local = pd.DatetimeIndex(parsed).as_unit("ns")
        result = _assign(result, naive, _localize(local, tz, problems, positions=np.flatnonzero(naive)))
    missing = np.isnat(result.values)
    expected = "yyyyMMdd HHmmss" if fmt else "ISO 8601"
    for i in np.flatnonzero(missing):
        if not any("local time" in p for p in problems[i]):
            problems[i].append(f"timestamp {text.iat[i]!r} cannot be parsed (expected {expected})")
    return result


def _parse_compact(column: pd.Series) -> pd.DatetimeIndex:
    """``yyyyMMdd HHmmss`` → naive datetimes, vectorised over the bytes (strptime is ~10x
    slower). Anything that is not exactly that pattern, or not a real date, becomes NaT."""
    raw = column.to_numpy(dtype="S16")
    b = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 16).astype(np.int64)
    d = b - 48
    digit_cols = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    ok = ((d[:, digit_cols] >= 0) & (d[:, digit_cols] <= 9)).all(axis=1) & (b[:, 8] == 32) & (b[:, 15] == 0)
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month = d[:, 4] * 10 + d[:, 5]
    day = d[:, 6] * 10 + d[:, 7]
    hour, minute, second = d[:, 9] * 10 + d[:, 10], d[:, 11] * 10 + d[:, 12], d[:, 13] * 10 + d[:, 14]
    ok &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31) & (hour < 24) & (minute < 60) & (second < 60)
    year, month, day = np.where(ok, year, 1970), np.where(ok, month, 1), np.where(ok, day, 1)
    months = (year - 1970) * 12 + (month - 1)
    dates = months.astype("datetime64[M]").astype("datetime64[D]") + (day - 1).astype("timedelta64[D]")
    ok &= dates.astype("datetime64[M]").astype("int64") == months  # 30 February and friends
    stamps = (dates.astype("datetime64[s]") + (hour * 3600 + minute * 60 + second).astype("timedelta64[s]"))
    stamps = stamps.astype("datetime64[ns]")
    stamps[~ok] = np.datetime64("NaT")
    return pd.DatetimeIndex(stamps)


def _assign(target: pd.DatetimeIndex, mask: np.ndarray, values: pd.DatetimeIndex) -> pd.DatetimeIndex:
    out = target.asi8.copy()
    out[mask] = values.tz_convert("UTC").asi8
    return pd.DatetimeIndex(pd.to_datetime(out, utc=True)).as_unit("ns")


def _localize(local: pd.DatetimeIndex, tz: str, problems: defaultdict[int, list[str]],
              positions: np.ndarray | None = None) -> pd.DatetimeIndex:
    """Exchange-local naive times → UTC, resolving DST folds by file order.

    In the repeated hour after a fall-back switch, local times run forward once in
    daylight time and then again in standard time; the step backwards marks the change.
    Local times inside a spring-forward gap do not exist and are rejected.
    """
    as_nat = local.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    as_dst = local.tz_localize(tz, ambiguous=np.ones(len(local), dtype=bool), nonexistent="NaT")
    present = ~np.isnat(local.values)
    nonexistent = present & np.isnat(as_dst.values)
    ambiguous = present & np.isnat(as_nat.values) & ~nonexistent
    dst_flags = np.ones(len(local), dtype=bool)
    if ambiguous.any():
        previous = None
        second_pass = False
        stamps = local.asi8
        for i in range(len(local)):
            if not ambiguous[i]:
                if present[i]:
                    previous, second_pass = None, False
                continue
            if previous is not None and stamps[i] < previous:
                second_pass = True
            dst_flags[i] = not second_pass
            previous = stamps[i]
    resolved = local.tz_localize(tz, ambiguous=dst_flags, nonexistent="NaT")
    for i in np.flatnonzero(nonexistent):
        problems[int(positions[i]) if positions is not None else i].append(f"local time {local[i]} does not exist in {tz} (skipped by a DST switch)")
    return resolved.tz_convert("UTC").as_unit("ns")


def _reject_duplicates(ts: pd.DatetimeIndex, lines: np.ndarray, problems: defaultdict[int, list[str]]) -> None:
    stamps = ts.asi8
    valid = ~np.isnat(ts.values)
    duplicated = pd.Series(stamps).duplicated(keep="first").to_numpy() & valid
    if not duplicated.any():
        return
    first_line = pd.Series(lines[valid], index=stamps[valid]).groupby(level=0).first()
    for i in np.flatnonzero(duplicated):
        problems[i].append(f"duplicate timestamp {ts[i].isoformat()} (first at line {first_line[stamps[i]]})")


def _raw_lines(path: Path, fmt: str, raw: pd.DataFrame, wanted: np.ndarray) -> dict[int, str]:
    """The original text of the rejected lines (a re-rendered row for Parquet)."""
    wanted_set = set(int(x) for x in wanted)
    if fmt == "records":  # the line is the record's index
        return {line: ",".join(map(str, raw.iloc[line].tolist())) for line in wanted_set}
    if fmt == "parquet":
        index = {int(line): pos for pos, line in enumerate(range(1, len(raw) + 1))}
        return {line: ",".join(map(str, raw.iloc[index[line]].tolist())) for line in wanted_set}
    found: dict[int, str] = {}
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if number in wanted_set:
                found[number] = text.rstrip("\r\n")
                if len(found) == len(wanted_set):
                    break
    return found

