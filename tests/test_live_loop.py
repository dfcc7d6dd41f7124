"""The loop without files: two trading days replayed through the real service over HTTP, with
an empty landing folder. The bars the requests carried are stored exactly, the live-bars
sensor materializes their partitions, and every prediction whose horizon has passed gets
its outcome. The same replay with the database gone for 30 s in the middle stores exactly
the same bars and prediction rows, with no failed request."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import date, timedelta

import pandas as pd
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from dagster import DagsterInstance
from serving_setup import DatabaseProxy, Server, bars, request_for

from smc_core.calendar import CME_EQUITY
from smc_core.db import Database, create_database, with_database
from smc_core.ingest import write_live_bars
from smc_core.labels import Horizon
from smc_core.migrations import migrate
from smc_core.outcomes import resolve_outcomes
from smc_core.settings import Settings
from smc_jobs.local import LocalRunner

pytestmark = pytest.mark.slow  # ~3 min: the data layer it uses is repeated on the embedded server elsewhere

CONTEXT = 49
OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def market():
    """Two trading days of one-minute ES bars."""
    return bars(days=2, seed=9)


@pytest.fixture(scope="module")
def second_database(admin_url, database):
    """A second fresh database on the same server, for the run with the outage."""
    name = conninfo_to_dict(database.url)["dbname"] + "_b"
    create_database(admin_url, name)
    db = Database(with_database(admin_url, name))
    migrate(db)
    yield db
    db.close()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def replay(server: Server, market: pd.DataFrame, pace_per_s: float | None = None, during=None) -> list[int]:
    """POST every bar from row CONTEXT-1 on, with its 48 bars of context, as the strategy does."""
    statuses = []
    started = time.monotonic()
    for count, end in enumerate(range(CONTEXT - 1, len(market))):
        if pace_per_s:
            time.sleep(max(0.0, started + count / pace_per_s - time.monotonic()))
        statuses.append(server.predict(request_for(market, end, CONTEXT)).status_code)
        if during is not None:
            during(count)
    return statuses


def wait_stored(server: Server, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = server.client.get("/health").json()
        if all(health[name]["queued"] == 0 and health[name]["spool_rows"] == 0
               for name in ("prediction_log", "bar_capture")):
            return health
        time.sleep(0.5)
    raise AssertionError(f"rows still waiting after {timeout}s (a writer's writing_for_s says whether it is stuck in a "
                         f"database call): {health}")


def stored_bars(db: Database) -> pd.DataFrame:
    with db.connection() as conn:
        rows = conn.execute("SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = 'ES' "
                            "AND timeframe = '1m' ORDER BY ts").fetchall()
    return pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"])


def checksum(frame: pd.DataFrame) -> str:
    stamps = pd.DatetimeIndex(pd.to_datetime(frame["ts"], utc=True)).as_unit("ns").asi8
    values = frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64")
    return hashlib.sha256(stamps.tobytes() + values.tobytes()).hexdigest()


def logged_predictions(db: Database) -> list[tuple]:
    with db.connection() as conn:
        return conn.execute(
            """SELECT ts, shadow, symbol, timeframe, model_version, label, raw_label, confidence, p_long, p_short,
                      p_skip, position_size, features FROM predictions ORDER BY ts, shadow""").fetchall()


@pytest.fixture(scope="module")
def without_outage(database, package, market, tmp_path_factory):
    home = tmp_path_factory.mktemp("calm")
    server = Server({"MODEL_PATH": str(package), "DATABASE_URL": database.url, "RATE_LIMIT_PER_SECOND": "100000",
                     "SMC_LANDING_DIR": str(home / "landing")}, home).wait()
    try:
        statuses = replay(server, market)
        health = wait_stored(server)
    finally:
        server.stop()
    return statuses, health, home


def test_replayed_days_are_stored_exactly_and_the_sensor_closes_the_loop(without_outage, database, market):
    statuses, health, home = without_outage
    assert set(statuses) == {200} and len(statuses) == len(market) - CONTEXT + 1
    stored = stored_bars(database)
    assert len(stored) == len(market)
    assert checksum(stored) == checksum(market)  # every bar the requests carried, exactly as sent
    assert health["bar_capture"]["inserted"] == len(market) and health["bar_capture"]["conflicting"] == 0
    # steady state: each request wrote only its new bar, never the 48 it repeated
    assert health["bar_capture"]["written"] == len(market)
    assert len(logged_predictions(database)) == len(statuses)

    env = {"SMC_HOME": str(home), "DATABASE_URL": database.url, "SMC_LANDING_DIR": str(home / "landing"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "SMC_PARTITION_START": "2024-01-01"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        from smc_jobs.definitions import build_definitions

        (home / "dagster").mkdir()
        instance = DagsterInstance.local_temp(str(home / "dagster"))
        runner = LocalRunner(build_definitions(Settings.from_env()), instance)
        first = runner.tick("live_bars_sensor")
        keys = sorted(str(request.partition_key) for request in first.run_requests)
        days = sorted({str(day) for day in CME_EQUITY.trading_day_of(market["ts"])})
        assert keys == [f"{day}|ES" for day in days]
        assert all(r.tags["smc/trigger"] == "live_bars" for r in first.run_requests)
        for request in first.run_requests:
            runner.execute(request, "market_data_job")
        assert runner.tick("live_bars_sensor").run_requests == []  # nothing changed: nothing to run
        # bars of a session still trading wait for its close
        upcoming = CME_EQUITY.trading_days(date.today() + timedelta(days=2), date.today() + timedelta(days=9))[0]
        opens = CME_EQUITY.session_bounds(upcoming)[0]
        with database.connection() as conn:
            write_live_bars(conn, "CL", "1m", market.iloc[:3].reset_index(drop=True).assign(
                ts=[opens + pd.Timedelta(minutes=k + 1) for k in range(3)]), "live:test")
        waiting = runner.tick("live_bars_sensor")
        assert waiting.run_requests == [] and "still trading" in waiting.skip_message
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)

    with database.connection() as conn:
        assert conn.execute("SELECT count(*) FROM features WHERE symbol = 'ES' AND timeframe = '1m'"
                            ).fetchone()[0] == len(market)
        assert conn.execute("SELECT count(*) FROM features WHERE symbol = 'ES' AND timeframe = '5m'"
                            ).fetchone()[0] == len(market) // 5
    resolve_outcomes(database, horizon=Horizon().name)
    with database.connection() as conn:
        unresolved = conn.execute(
            """SELECT count(*) FROM predictions p JOIN labels l ON l.symbol = p.symbol AND l.timeframe = p.timeframe
                 AND l.ts = p.ts AND l.horizon = %s AND l.label >= 0
               WHERE NOT EXISTS (SELECT 1 FROM prediction_outcomes o WHERE o.request_id = p.request_id)""",
            (Horizon().name,)).fetchone()[0]
        resolved = conn.execute("SELECT count(*) FROM prediction_outcomes").fetchone()[0]
    assert unresolved == 0 and resolved > 0.9 * len(statuses)


def test_a_30_second_database_outage_loses_nothing(without_outage, database, second_database, package, market,
                                                   tmp_path_factory):
    proxy = DatabaseProxy(second_database.url).restore()
    home = tmp_path_factory.mktemp("outage")
    server = Server({"MODEL_PATH": str(package), "DATABASE_URL": proxy.url, "RATE_LIMIT_PER_SECOND": "100000"},
                    home).wait()
    window: dict[str, float] = {}
    total = len(market) - CONTEXT + 1

    def outage(count: int) -> None:
        if count == total // 4:
            proxy.cut()
            window["cut"] = time.monotonic()
            threading.Timer(OUTAGE_S, lambda: (proxy.restore(), window.setdefault("back", time.monotonic()))).start()

    try:
        statuses = replay(server, market, pace_per_s=total / (OUTAGE_S * 1.6), during=outage)
        during = server.client.get("/health").json()
        deadline = time.monotonic() + 2 * OUTAGE_S
        while "back" not in window and time.monotonic() < deadline:
            time.sleep(0.2)
        health = wait_stored(server, timeout=180)
    finally:
        server.stop()
        proxy.cut()
    assert "back" in window and window["back"] - window["cut"] >= OUTAGE_S
    assert set(statuses) == {200} and len(statuses) == total  # 0 failed requests
    assert during["bar_capture"]["spooled"] > 0 and during["prediction_log"]["spooled"] > 0  # it was really away
    assert health["bar_capture"]["dropped"] == 0 and health["prediction_log"]["dropped"] == 0
    assert checksum(stored_bars(second_database)) == checksum(stored_bars(database)) == checksum(market)
    assert logged_predictions(second_database) == logged_predictions(database)
