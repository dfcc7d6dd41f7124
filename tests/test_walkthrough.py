"""The README's "Bring your own data" walkthrough, run as written, on hourly and on daily data.

The commands come out of the README's section (its ```bash blocks, in order), so the test and
the README cannot drift; only the data file differs, and for daily bars ``SMC_TIMEFRAME=1h``
becomes ``1d`` as the section says. ``smc`` and ``dagster`` are this checkout's
(``python -m``). The data: realistic EUR/USD-like bars from the synthetic market on the 24/5
calendar, written as a vendor would — hourly bars stamped at their close in UTC, daily bars
as dates. The gates may refuse; every step must work, and the counts must add up.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import date, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smc_core.calendar import SessionCalendar
from smc_core.synthetic import Instrument, SyntheticConfig, generate_bars

ROOT = Path(__file__).resolve().parent.parent
FX = SessionCalendar("24/5", time(8), time(12))


def readme_commands(section: str = "## Bring your own data") -> str:
    """The section's ```bash blocks in order."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(section):]
    body = body[:body.index("\n## ", len(section))]
    found = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    assert len(found) == 4, "the walkthrough lost its commands"
    return "".join(found)


DAILY_DAYS, DAILY_START = 1100, date(2021, 3, 1)
"""The daily walkthrough's data: above the ~1,000 daily bars training needs (README), all past."""


def hourly_bars(days: int, start: date = date(2024, 3, 4)) -> pd.DataFrame:
    config = SyntheticConfig(days=days, start=start, timeframe=timedelta(hours=1), seed=11,
                             instrument=Instrument("EURUSD", tick_size=0.00001, tick_value=1.0, start_price=1.08),
                             calendar=FX, annual_vol=0.08, edge="smc")
    return generate_bars(config)


def daily_bars(days: int, start: date) -> pd.DataFrame:
    """Hourly bars aggregated per 24/5 session, dated like a vendor's daily file."""
    hourly = hourly_bars(days, start)
    day = FX.trading_day_of(hourly["ts"])
    grouped = hourly.assign(day=day).groupby("day")
    daily = grouped.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
                        volume=("volume", "sum")).reset_index()
    return daily.assign(ts=pd.DatetimeIndex(daily["day"]).strftime("%Y-%m-%d"))


def run_walkthrough(tmp_path: Path, database_url: str, timeframe: str, frame: pd.DataFrame
                    ) -> subprocess.CompletedProcess:
    name = f"eurusd_{timeframe}.csv"
    columns = ["ts", "open", "high", "low", "close", "volume"]
    if timeframe == "1h":
        frame = frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    frame[columns].to_csv(tmp_path / name, index=False)
    script = readme_commands()
    if timeframe != "1h":
        script = script.replace("SMC_TIMEFRAME=1h", f"SMC_TIMEFRAME={timeframe}").replace("eurusd_1h.csv", name)
    prelude = (f'smc() {{ "{sys.executable}" -m smc_jobs.cli "$@"; }}\n'
               f'dagster() {{ "{sys.executable}" -m dagster "$@"; }}\nset -euo pipefail\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SMC_", "DAGSTER_", "MLFLOW_"))}
    env.update(HOME=str(tmp_path), DATABASE_URL=database_url, PYTHONPATH=str(ROOT), TORCH_THREADS="1",
               MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true",
               DAGSTER_DISABLE_TELEMETRY="true")
    return subprocess.run(["bash", "-c", prelude + script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1500)


def reconcile(database_url: str, symbol: str, timeframe: str, calendar: SessionCalendar) -> dict:
    """Every stored bar is in a session (and has features and a label) or counted as outside one."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        stored = pd.DatetimeIndex(pd.to_datetime([r[0] for r in conn.execute(
            "SELECT ts FROM bars WHERE symbol = %s AND timeframe = %s ORDER BY ts", (symbol, timeframe))], utc=True))
        featured = {r[0] for r in conn.execute(
            "SELECT ts FROM features WHERE symbol = %s AND timeframe = %s", (symbol, timeframe))}
        labelled = {r[0] for r in conn.execute(
            "SELECT ts FROM labels WHERE symbol = %s AND timeframe = %s", (symbol, timeframe))}
    inside = calendar.in_session(stored)
    return {"stored": len(stored), "in_session": int(inside.sum()), "outside": int((~inside).sum()),
            "featured": len(featured), "labelled": len(labelled),
            "in_session_featured": int(sum(ts in featured for ts in stored[inside])),
            "in_session_labelled": int(sum(ts in labelled for ts in stored[inside]))}


def evaluation_metadata(home: Path) -> dict:
    from dagster import AssetKey, DagsterInstance

    instance = DagsterInstance.from_config(str(home / "dagster"))
    event = instance.get_latest_materialization_event(AssetKey("challenger_evaluation"))
    assert event is not None, "promotion_job recorded no evaluation"
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


@pytest.fixture
def fresh_url(admin_url, request):
    """A database of its own for each run: the walkthrough starts from nothing."""
    from conftest import _drop_database, _fresh_database

    from smc_core.db import with_database

    name = _fresh_database(admin_url, request.node.name)
    yield with_database(admin_url, name)
    _drop_database(admin_url, name)


def check_stored_and_reconciled(done, database_url: str, timeframe: str, frame: pd.DataFrame, first_day: date) -> None:
    assert done.returncode == 0, f"the walkthrough failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    assert "EURUSD added to the Dagster partitions" in done.stdout
    assert f"partitions follow the stored data: SMC_PARTITION_START={first_day}" in done.stdout
    assert re.search(r"backfill \w+: (\d+) of \1 partition\(s\) materialized, 0 failed", done.stdout), done.stdout
    counts = reconcile(database_url, "EURUSD", timeframe, FX)
    assert counts["stored"] == len(frame)  # nothing lost on the way in
    assert counts["outside"] == 0 and counts["in_session"] == len(frame)
    assert counts["in_session_featured"] == counts["in_session"] == counts["featured"]
    assert counts["in_session_labelled"] == counts["in_session"] == counts["labelled"]


@pytest.mark.slow
def test_readme_walkthrough_on_hourly_data(tmp_path, fresh_url):
    """Every step of the section: ingest, backfill, base model, LoRA, walk-forward gates."""
    frame = hourly_bars(45)
    done = run_walkthrough(tmp_path, fresh_url, "1h", frame)
    check_stored_and_reconciled(done, fresh_url, "1h", frame, date(2024, 3, 4))
    metadata = evaluation_metadata(tmp_path / "smc-eurusd")
    assert metadata["verdict"] in {"passed", "refused"}
    assert metadata["risk_terms"]["tick_size"] == 0.00001  # EURUSD's, from the instruments file
    assert np.isfinite(float(metadata["selected_threshold"]))


@pytest.mark.slow
def test_readme_walkthrough_on_daily_data(tmp_path, fresh_url):
    """The whole section with SMC_TIMEFRAME=1d on a daily file of dates: each bar stored at its
    session's close (17:00 New York), labelled across sessions, backfilled a range per run, then
    trained and judged like the hourly data. Training needs about 1,000 daily bars (README)."""
    frame = daily_bars(DAILY_DAYS, DAILY_START)
    done = run_walkthrough(tmp_path, fresh_url, "1d", frame)
    check_stored_and_reconciled(done, fresh_url, "1d", frame, DAILY_START)
    assert re.search(r"backfill \w+: \d+ of \d+ partition\(s\) materialized, 0 failed \(1 run\(s\)\)", done.stdout)
    import psycopg

    with psycopg.connect(fresh_url) as conn:
        first = conn.execute("SELECT min(ts) FROM bars WHERE symbol = 'EURUSD'").fetchone()[0]
        barriers = dict(conn.execute("SELECT barrier, count(*) FROM labels GROUP BY barrier").fetchall())
    assert pd.Timestamp(first).tz_convert("America/New_York") == pd.Timestamp(f"{DAILY_START} 17:00", tz="America/New_York")
    assert "session_end" not in barriers  # daily positions are held from session to session
    assert barriers.get("up", 0) + barriers.get("down", 0) + barriers.get("time", 0) > 0
    metadata = evaluation_metadata(tmp_path / "smc-eurusd")
    assert metadata["verdict"] in {"passed", "refused"}
    assert metadata["risk_terms"]["tick_size"] == 0.00001
    assert np.isfinite(float(metadata["selected_threshold"]))
