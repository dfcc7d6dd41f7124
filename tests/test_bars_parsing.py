"""Parsing and validation of bar files: every kind of bad row, every unreadable file."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from smc_core.bars import detect_format, read_bar_file
from smc_core.errors import BarFileError

MINUTE = timedelta(minutes=1)
GOOD = "20240305 093100;5000.25;5001;4999.75;5000.5;120"


def write(tmp_path, text, name="ES 03-24.Last.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("line, reason", [
    ("20240305 093200;5000.25;4999;4999.75;5000.5;120", "high 4999 is below max(open, close) 5000.5"),
    ("20240305 093200;5000.25;5001;5000.5;5000.25;120", "low 5000.5 is above min(open, close) 5000.25"),
    ("20240305 093200;5000.25;5001;4999.75;5000.5;-3", "volume -3 is negative"),
    ("20240305 093200;5000.25;5001;4999.75;abc;120", "close is not a number: 'abc'"),
    ("20240305 093200;5000.25;5001;4999.75;nan;120", "close is not finite: 'nan'"),
    ("20240305 093200;5000.25;inf;4999.75;5000.5;120", "high is not finite: 'inf'"),
    ("20240305 093200;5000.25;5001;4999.75;;120", "close is missing"),
    ("20240305 093200;5000.25;5001", "low is missing"),
    ("20240305 99x200;5000.25;5001;4999.75;5000.5;120", "cannot be parsed (expected yyyyMMdd HHmmss)"),
    ("20240230 093200;5000.25;5001;4999.75;5000.5;120", "'20240230 093200' cannot be parsed"),
    ("20240305 246000;5000.25;5001;4999.75;5000.5;120", "'20240305 246000' cannot be parsed"),
    ("20240305 093100;5000.25;5001;4999.75;5000.5;120", "duplicate timestamp 2024-03-05T15:31:00+00:00 (first at line 1)"),
    ("20240305 093230;5000.25;5001;4999.75;5000.5;120", "is not on the 1m bar grid"),
    ("20240305 093200;5000.25;5001;4999.75;5000.5;120;7", "expected 6 ';'-separated fields, found 7"),
    ("20240310 023000;5000.25;5001;4999.75;5000.5;120", "does not exist in America/Chicago"),
])
def test_each_bad_row_is_rejected_with_its_line(tmp_path, line, reason):
    path = write(tmp_path, f"{GOOD}\n{line}\n20240305 093300;5000.25;5001;4999.75;5000.5;120\n")
    parsed = read_bar_file(path, timeframe=MINUTE)
    assert len(parsed.rejections) == 1
    rejection = parsed.rejections[0]
    assert rejection.line == 2
    assert reason in rejection.reason
    assert rejection.raw == line
    assert str(rejection).startswith(f"{path}:2: ")
    assert len(parsed.frame) == 2  # the good rows, untouched


def test_ninjatrader_local_times_become_utc_across_both_dst_switches(tmp_path):
    lines = [
        "20240310 015900;1;2;0.5;1.5;1",   # CST, UTC-6
        "20240310 030000;1;2;0.5;1.5;1",   # CDT, UTC-5 (02:00-02:59 does not exist)
        "20241103 005900;1;2;0.5;1.5;1",   # CDT
        "20241103 010000;1;2;0.5;1.5;1",   # first 01:00, CDT
        "20241103 015900;1;2;0.5;1.5;1",   # CDT
        "20241103 010000;1;2;0.5;1.5;1",   # second 01:00, CST
        "20241103 015900;1;2;0.5;1.5;1",   # CST
        "20241103 020000;1;2;0.5;1.5;1",   # CST
    ]
    parsed = read_bar_file(write(tmp_path, "\n".join(lines) + "\n"), timeframe=MINUTE)
    assert parsed.rejections == []
    expected = pd.to_datetime([
        "2024-03-10 07:59", "2024-03-10 08:00", "2024-11-03 05:59", "2024-11-03 06:00",
        "2024-11-03 06:59", "2024-11-03 07:00", "2024-11-03 07:59", "2024-11-03 08:00"], utc=True)
    assert list(parsed.frame["ts"]) == list(expected)


def test_generic_csv_with_offsets_naive_times_and_delta(tmp_path):
    text = ("timestamp,open,high,low,close,volume,delta\n"
            "2024-03-05T15:31:00Z,1,2,0.5,1.5,10,-4\n"
            "2024-03-05 09:32:00,1,2,0.5,1.5,10,3\n"          # naive: exchange time (CST)
            "2024-03-05T10:33:00-05:00,1,2,0.5,1.5,10,2\n")
    parsed = read_bar_file(write(tmp_path, text, "bars.csv"), timeframe=MINUTE)
    assert parsed.format == "csv" and parsed.has_delta and parsed.rejections == []
    assert list(parsed.frame["ts"]) == list(pd.to_datetime(
        ["2024-03-05 15:31", "2024-03-05 15:32", "2024-03-05 15:33"], utc=True))
    assert list(parsed.frame["delta"]) == [-4, 3, 2]
    assert list(parsed.lines) == [2, 3, 4]


def test_csv_missing_delta_cell_is_rejected_not_nulled(tmp_path):
    text = "ts,open,high,low,close,volume,delta\n2024-03-05T15:31:00Z,1,2,0.5,1.5,10,\n"
    parsed = read_bar_file(write(tmp_path, text, "bars.csv"))
    assert [r.reason for r in parsed.rejections] == ["delta is missing"]


def test_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({
        "ts": pd.date_range("2024-03-05 15:31", periods=3, freq="min", tz="UTC"),
        "open": [1.0, 1, 1], "high": [2.0, 2, 2], "low": [0.5, 0.5, 0.5], "close": [1.5, 1.5, 1.5],
        "volume": [10.0, 10, 10]})
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    parsed = read_bar_file(path, timeframe=MINUTE)
    assert parsed.format == "parquet" and not parsed.has_delta
    pd.testing.assert_series_equal(parsed.frame["ts"], frame["ts"].astype("datetime64[ns, UTC]"))
    assert parsed.frame["delta"].isna().all()


def test_unsorted_file_is_sorted_with_line_numbers_kept(tmp_path):
    text = "20240305 093300;1;2;0.5;1.5;1\n20240305 093100;1;2;0.5;1.5;1\n\n20240305 093200;1;2;0.5;1.5;1\n"
    parsed = read_bar_file(write(tmp_path, text))
    assert parsed.frame["ts"].is_monotonic_increasing
    assert list(parsed.lines) == [2, 4, 1]
    assert parsed.rows_read == 3


@pytest.mark.parametrize("content, name, message", [
    ("", "empty.txt", "file is empty"),
    ("\n\n  \n", "blank.txt", "file is empty"),
    ("20240305 093100,1,2,0.5,1.5,1\n", "comma.txt", "wrong delimiter ','"),
    ("ts;open;high;low;close;volume\n2024-03-05T15:31:00Z;1;2;0.5;1.5;1\n", "semi.csv", "wrong delimiter ';'"),
    ("hello world\n", "junk.txt", "unknown format"),
    ("ts,open,high,close\n2024-03-05T15:31:00Z,1,2,1.5\n", "cols.csv", "missing column(s) low, volume"),
])
def test_unreadable_files_raise_one_line_error(tmp_path, content, name, message):
    path = write(tmp_path, content, name)
    with pytest.raises(BarFileError) as raised:
        read_bar_file(path)
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(path))
    assert "\n" not in str(raised.value)


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(BarFileError, match="no such file"):
        read_bar_file(tmp_path / "nope.txt")
    with pytest.raises(BarFileError, match="not a regular file"):
        read_bar_file(tmp_path)
    locked = write(tmp_path, GOOD + "\n", "locked.txt")
    locked.chmod(0)
    if os.geteuid() != 0:  # root can read anything
        with pytest.raises(BarFileError, match="cannot read"):
            read_bar_file(locked)


def test_explicit_format_mismatch_reports_the_problem(tmp_path):
    path = write(tmp_path, GOOD + "\n", "x.txt")
    with pytest.raises(BarFileError, match="missing column"):
        read_bar_file(path, fmt="csv")
    with pytest.raises(BarFileError, match="unknown format 'xml'"):
        read_bar_file(path, fmt="xml")


def test_detect_format(tmp_path):
    assert detect_format(write(tmp_path, GOOD + "\n")) == "ninjatrader"
    assert detect_format(write(tmp_path, "time,open,high,low,close,volume\n", "a.csv")) == "csv"
    assert np.isfinite(read_bar_file(write(tmp_path, GOOD + "\n")).frame["close"]).all()


@pytest.mark.parametrize("text, name, line", [
    (f"{GOOD}\n20240305 093200;5000.25;5001;4999.75;5000.5;12", "cut.txt",
     "20240305 093200;5000.25;5001;4999.75;5000.5;12"),
    ("ts,open,high,low,close,volume\n2024-03-05T15:31:00Z,1,2,0.5,1.5,10\n2024-03-05T15:32:00Z,1,2,0.5,1.5,1",
     "cut.csv", "2024-03-05T15:32:00Z,1,2,0.5,1.5,1"),
], ids=["ninjatrader", "csv"])
def test_a_last_line_without_line_end_is_rejected_even_when_it_parses(tmp_path, text, name, line):
    """A line cut inside its last number still parses (…;120 cut to …;12); the missing line end is the trace."""
    parsed = read_bar_file(write(tmp_path, text, name), timeframe=MINUTE)
    assert [(r.line, r.raw) for r in parsed.rejections] == [(parsed.rows_read + (name.endswith(".csv")), line)]
    assert parsed.rejections[0].reason.startswith("the file ends inside this line (no line end after it)")
    assert len(parsed.frame) == 1
    whole = read_bar_file(write(tmp_path, text + "0\n", name), timeframe=MINUTE)  # finished: no rejection
    assert whole.rejections == [] and len(whole.frame) == 2


def test_crlf_and_a_trailing_blank_line_count_as_complete(tmp_path):
    assert read_bar_file(write(tmp_path, f"{GOOD}\r\n")).rejections == []
    assert read_bar_file(write(tmp_path, f"{GOOD}\n\n")).rejections == []
