"""The `smc` command as a user runs it: one-line errors, non-zero exits, nothing written."""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

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
    with database.connection() as conn:  # the refused attempt has its ingest_log row, named in the error
        newest, status = conn.execute("SELECT id, status FROM ingest_log ORDER BY id DESC LIMIT 1").fetchone()
    assert status == "rejected" and f"the attempt is ingest #{newest} " in lines[-1]

    skipped = smc(env, "ingest", str(path), "--symbol", "ES", "--skip-invalid")
    assert skipped.returncode == 0 and "1 inserted" in skipped.stdout and "2 rejected" in skipped.stdout


# --- one line for every failure a user can cause -----------------------------------------------

def free_port() -> int:
    """A port nothing listens on (bound, then released): a real closed port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_error_line(result, code: int = 1) -> str:
    """The failure's only line: non-zero exit, no traceback, nothing else on stderr."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout and "Exception ignored" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def stored(env, database, tmp_path_factory):
    """Eight trading days of NQ (2024-01-02 … 2024-01-11) in the module's database."""
    out = tmp_path_factory.mktemp("stored")
    made = smc(env, "synth", "--days", "8", "--out", str(out), "--symbol", "NQ")
    assert made.returncode == 0, made.stderr
    loaded = smc(env, "ingest", *map(str, sorted((out / "NQ").glob("*.txt"))), "--symbol", "NQ")
    assert loaded.returncode == 0, loaded.stderr
    return sorted((out / "NQ").glob("*.txt"))


def test_replay_against_a_closed_port_names_the_url_and_how_to_start_the_service(env, stored):
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(smc(env, "replay", "--symbol", "NQ", "--day", "2024-01-03", "--url", url))
    assert f"no answer from the service at {url} (connection refused; 3 attempts)" in line
    assert "smc serve" in line


def test_replay_refuses_a_wrong_timeframe_listing_the_valid_forms(env, stored):
    line = one_error_line(smc(env, "replay", "--symbol", "NQ", "--day", "2024-01-03", "--timeframe", "1x"), code=2)
    assert "timeframe '1x' is not valid" in line and "unit s, m, h or d (e.g. 1m, 5m, 1h)" in line
    assert "smc replay --help" in line


def test_replay_of_a_day_without_data_lists_the_days_that_exist(env, stored):
    line = one_error_line(smc(env, "replay", "--symbol", "NQ", "--day", "2024-01-06"))
    assert line.startswith("error: no stored 1m bars for NQ on 2024-01-06 (Saturday: no session on the CME Globex "
                           "Equity calendar) in the database ")  # where: the database, password-free
    assert line.endswith("; NQ 1m has 8 trading days, 2024-01-02 to 2024-01-11: first 2024-01-02, 2024-01-03, "
                         "2024-01-04; last 2024-01-09, 2024-01-10, 2024-01-11")
    line = one_error_line(smc(env, "replay", "--symbol", "NQ", "--day", "2024-03-05"))
    assert "no stored 1m bars for NQ on 2024-03-05 in the database " in line and "; NQ 1m has 8 trading days" in line


def test_replay_of_an_unknown_symbol_or_timeframe_names_what_is_stored(env, stored):
    line = one_error_line(smc(env, "replay", "--symbol", "CL", "--day", "2024-01-03"))
    assert "no stored bars for symbol 'CL' in the database " in line and re.search(r"\(it holds [A-Z, ]*NQ", line)
    # 5m is resampled from the 1-minute bars (SMC_RESAMPLED's default); 15m is neither stored nor resampled
    line = one_error_line(smc(env, "replay", "--symbol", "NQ", "--day", "2024-01-03", "--timeframe", "15m"))
    assert "no stored 15m bars for NQ in the database " in line and "(it holds NQ at 1m)" in line
    line = one_error_line(smc(env, "replay", "--symbol", "nq", "--day", "2024-01-03"))
    assert "symbol 'nq' is not valid" in line and "did you mean 'NQ'?" in line
    line = one_error_line(smc(env, "replay", "--symbol", "NQ", "--day", "2024-01-32"))
    assert "--day '2024-01-32' is not a date (YYYY-MM-DD)" in line


def test_a_missing_file_is_named_before_the_database_is_touched(env, tmp_path):
    unreachable = dict(env, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    line = one_error_line(smc(unreachable, "ingest", str(tmp_path / "gone.txt"), "--symbol", "ES"))
    assert line == f"error: {tmp_path / 'gone.txt'}: no such file"


@pytest.mark.parametrize("url, message", [
    ("not a url", "DATABASE_URL is not a PostgreSQL URL or key=value string: missing \"=\" after \"not\""),
    ("mysql://u@h/db", "DATABASE_URL must be a postgresql:// URL, got 'mysql'"),
    ("postgresql://postgres@127.0.0.1:{port}/smc", "cannot connect to PostgreSQL at postgres@127.0.0.1:{port}/smc: "),
])
def test_a_bad_or_unreachable_database_is_one_line(env, url, message):
    port = free_port()
    broken = dict(env, DATABASE_URL=url.format(port=port))
    for args in (["db", "status"], ["replay", "--symbol", "NQ", "--day", "2024-01-03"]):
        line = one_error_line(smc(broken, *args))
        assert message.format(port=port) in line
    if "{port}" in url:  # libpq's two-line "Connection refused / Is the server running" joined into one
        assert "Connection refused; Is the server running" in line and "check DATABASE_URL" in line


def test_ctrl_c_exits_130_with_one_line(env, stored):
    """Ctrl-C while replay waits on a service that accepted the connection but never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        process = subprocess.Popen([*SMC, "replay", "--symbol", "NQ", "--day", "2024-01-03", "--url",
                                    f"http://127.0.0.1:{silent.getsockname()[1]}"], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        silent.settimeout(60)
        connection, _ = silent.accept()  # the CLI is now inside its first request
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        connection.close()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert one_error_line(result, code=130) == "error: interrupted (Ctrl-C)"


def test_unknown_commands_and_missing_options_are_one_line(env):
    assert "No such command 'replya'" in one_error_line(smc(env, "replya"), code=2)
    assert "Missing option '--day'" in one_error_line(smc(env, "replay", "--symbol", "NQ"), code=2)
    assert "LOG_LEVEL='LOUD' is not one of" in one_error_line(smc(dict(env, LOG_LEVEL="loud"), "db", "status"))


def test_debug_shows_the_traceback_behind_the_line(env):
    result = smc(env, "--debug", "synth", "--days", "1", "--out", "/proc/smc-cannot-write-here")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: /proc/smc-cannot-write-here: No such file or directory"


def test_the_database_pool_is_closed_before_interpreter_exit(env, stored):
    """An unclosed psycopg pool is joined by its finalizer at exit, sometimes from its own worker
    thread ("cannot join current thread"); every command closes it when it ends, also on errors."""
    probe = ("import atexit, sys, threading\n"
             "atexit.register(lambda: print('threads at exit:', sorted(t.name for t in threading.enumerate()),"
             " file=sys.stderr))\n"
             "from smc_jobs.cli import main\nmain(sys.argv[1:])\n")
    for args in (["db", "status"], ["replay", "--symbol", "NQ", "--day", "2024-01-06"],
                 ["replay", "--symbol", "NQ", "--day", "2024-01-03", "--url", f"http://127.0.0.1:{free_port()}"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True,
                                timeout=120)
        assert "threads at exit: ['MainThread']" in result.stderr, result.stderr


# --- smc serve --host/--port -----------------------------------------------------------------------

def test_serve_help_shows_host_port_and_examples(env):
    result = smc(env, "serve", "--help")
    assert result.returncode == 0
    assert "--host TEXT" in result.stdout and "--port INTEGER RANGE" in result.stdout
    assert "smc serve --host 0.0.0.0 --port 8080" in result.stdout


@pytest.mark.parametrize("port", ["70000", "0", "http"])
def test_serve_refuses_a_bad_port_in_one_line(env, port):
    line = one_error_line(smc(env, "serve", "--dev", "--port", port), code=2)
    assert "Invalid value for '--port'" in line and "smc serve --help" in line


def test_serve_passes_host_and_port_to_the_listener(env):
    """The values reach the bind: a taken HOST:PORT is refused before BentoML starts, naming both."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = one_error_line(smc(env, "serve", "--dev", "--host", "127.0.0.1", "--port", str(port)))
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    line = one_error_line(smc(dict(env, PORT=str(port), HOST="203.0.113.7"), "serve", "--dev"))  # not this host
    assert line.startswith(f"error: cannot listen on 203.0.113.7:{port}: Cannot assign requested address")
    line = one_error_line(smc(dict(env, MODEL_PATH=str(Path(env["SMC_HOME"]) / "no-package")), "serve", "--dev"))
    assert "MODEL_PATH=" in line and "does not exist" in line


# --- help and progress -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["db"], ["db", "migrate"], ["db", "status"], ["ingest"], ["synth"], ["demo"],
                                     ["serve"], ["replay"], ["rollback"]])
def test_every_command_shows_examples_in_its_help(env, command):
    result = smc(env, *command, "--help")
    assert result.returncode == 0
    example = result.stdout.split("Examples:\n", 1)[-1].splitlines()[0]
    assert "Examples:\n" in result.stdout and f"smc {' '.join(command)}".strip() in example, result.stdout


def test_ingest_draws_a_bar_on_a_terminal_and_nothing_elsewhere(env, stored):
    """stderr on a pseudo-terminal: the bar is drawn and erased, stdout keeps its summary lines;
    with --quiet, or stderr a pipe, not one control character."""
    files = list(map(str, stored[:2]))
    plain = smc(env, "ingest", *files, "--symbol", "NQ")
    assert plain.returncode == 0 and "\r" not in plain.stderr and "\x1b" not in plain.stderr + plain.stdout
    for extra, drawn in (([], True), (["--quiet"], False)):
        leader, follower = pty.openpty()
        try:
            result = subprocess.run([*SMC, "ingest", *files, "--symbol", "NQ", *extra], env=env, stdout=subprocess.PIPE,
                                    stderr=follower, text=True, timeout=120)
            os.close(follower)
            terminal = _read_all(leader)
        finally:
            os.close(leader)
        assert result.returncode == 0 and result.stdout.count("0 inserted") == 2, result.stdout
        assert ("ingest [" in terminal and terminal.endswith("\r\x1b[K")) is drawn, repr(terminal)


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_training_progress_draws_one_bar_per_stage_with_its_fold(monkeypatch):
    """Events as smc_core's walk-forward sends them (stage "fold 2 lora", fold of folds, epoch):
    a bar per stage, early stopping closes it short, nothing at all when stderr is no terminal."""
    from smc_jobs.progress import TrainingProgress, training_progress

    events = [{"stage": f"fold {fold} {stage}", "fold": fold, "folds": 2, "epoch": epoch, "train_loss": 1.0,
               "valid_loss": 0.9 - epoch / 100, "seconds": 0.1}
              for fold in (1, 2) for stage in ("pretrain", "lora") for epoch in (1, 2)]
    leader, follower = pty.openpty()
    terminal = os.fdopen(follower, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    with TrainingProgress(3, on=True) as progress:
        for event in events:
            progress(event)
    terminal.close()
    drawn = _read_all(leader)
    os.close(leader)
    for fold in (1, 2):
        for stage in ("pretrain", "lora"):
            assert f"fold {fold}/2 {stage} epoch [" in drawn and "2/3" in drawn
    assert "valid loss 0.8800" in drawn and drawn.endswith("\r\x1b[K")  # erased when done

    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))
    silent = training_progress(3)
    assert not silent.on
