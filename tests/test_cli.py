"""The `smc` command as a user runs it: one-line errors, non-zero exits, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SMC = [sys.executable, "-m", "smc_jobs.cli"]


@pytest.fixture(scope="module")
def env(database, tmp_path_factory):
    environment = dict(os.environ, DATABASE_URL=database.url, SMC_HOME=str(tmp_path_factory.mktemp("home")))
    return environment


def smc(env, *args):
    return subprocess.run([*SMC, *args], env=env, capture_output=True, text=True, timeout=120)


def bar_count(database):
    with database.connection() as conn:
        return conn.execute("SELECT count(*) FROM bars").fetchone()[0]


def test_synth_then_ingest_then_status(env, database, tmp_path):
    made = smc(env, "synth", "--days", "2", "--out", str(tmp_path), "--symbol", "ES")
    assert made.returncode == 0, made.stderr
    files = sorted((tmp_path / "ES").glob("*.txt"))
    assert len(files) == 2
    loaded = smc(env, "ingest", *map(str, files), "--symbol", "ES", "--timeframe", "1m")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.count("1380 inserted") == 2
    status = smc(env, "db", "status")
    assert status.returncode == 0 and "storage:  native" in status.stdout or "timescaledb" in status.stdout
    assert "pending" not in status.stdout


@pytest.mark.parametrize("content, name, extra, message", [
    ("20240305 093100;1;2;0.5;1.5;1\n", "a.txt", ["--format", "csv"], "missing column(s)"),
    ("hello\n", "b.txt", [], "unknown format"),
    ("20240305 093100,1,2,0.5,1.5,1\n", "c.txt", [], "wrong delimiter ','"),
    ("", "d.txt", [], "file is empty"),
    (None, "missing.txt", [], "no such file"),
    ("20240305 093100;1;2;0.5;1.5;1\n", "e.txt", ["--symbol", "es"], "symbol 'es' is not valid"),
    ("20240305 093100;1;2;0.5;1.5;1\n", "f.txt", ["--timeframe", "1min"], "timeframe '1min' is not valid"),
])
def test_bad_input_gives_one_line_error_and_writes_nothing(env, database, tmp_path, content, name, extra, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    before = bar_count(database)
    args = ["ingest", str(path), "--symbol", "ES", *extra]
    if "--symbol" in extra:
        args = ["ingest", str(path), *extra]
    result = smc(env, *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert bar_count(database) == before


def test_rejected_rows_are_listed_with_file_and_line(env, database, tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("20240305 093100;1;2;0.5;1.5;1\n20240305 093200;1;2;0.5;1.5;-1\n20240305 093300;1;2;3;1.5;1\n")
    before = bar_count(database)
    result = smc(env, "ingest", str(path), "--symbol", "ES")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"rejected {path}:2: volume -1 is negative"
    assert lines[1] == f"rejected {path}:3: low 3 is above min(open, close) 1"
    assert lines[-1].startswith("error: 2 rejected rows") and "nothing was written" in lines[-1]
    assert bar_count(database) == before

    skipped = smc(env, "ingest", str(path), "--symbol", "ES", "--skip-invalid")
    assert skipped.returncode == 0 and "1 inserted" in skipped.stdout and "2 rejected" in skipped.stdout
