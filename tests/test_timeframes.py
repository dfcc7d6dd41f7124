"""Every timeframe is point in time: bars resampled in the database from 1-minute bars, replayed
one 1-minute bar at a time, never change a feature reading once it was made; and the service,
serving a model of a resampled timeframe, recomputes exactly the features the lineage stored."""

from __future__ import annotations

import time
from datetime import date

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from serving_setup import Server, request_for

from smc_assets.bars import bars
from smc_assets.features import features
from smc_assets.partitions import SYMBOLS, bar_partition_key
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.calendar import CME_EQUITY
from smc_core.features import CATALOGUE, compute_features
from smc_core.ingest import write_live_bars
from smc_core.model.pipeline import train_small_package
from smc_core.store import load_bars, read_features
from smc_core.synthetic import Instrument, SyntheticConfig, generate_bars, write_synthetic

MINUTES = 600  # 120 five-minute and 40 fifteen-minute bars: both get past the 30-bar lookback


def test_a_bar_by_bar_replay_of_one_minute_bars_rewrites_no_resampled_reading(database):
    minute = generate_bars(SyntheticConfig(days=1, seed=11)).iloc[:MINUTES].reset_index(drop=True)
    start, end = minute["ts"].iloc[0] - pd.Timedelta("1h"), minute["ts"].iloc[-1]
    readings: dict[str, dict[pd.Timestamp, np.ndarray]] = {"5m": {}, "15m": {}}
    rewritten = {timeframe: 0 for timeframe in readings}
    partial_buckets_seen = 0
    for k in range(MINUTES):
        with database.connection() as conn:
            write_live_bars(conn, "RP", "1m", minute.iloc[k:k + 1], "test:replay")
            raw_5m = conn.execute("SELECT count(*) FROM bars_5m WHERE symbol = 'RP'").fetchone()[0]
        for timeframe, seen in readings.items():
            bars = load_bars(database, "RP", timeframe, start, end, resampled=True)
            width = pd.Timedelta(timeframe.replace("m", "min"))
            assert len(bars) == (k + 1) // (width // pd.Timedelta("1min"))  # finished buckets only
            if len(bars) == 0:
                continue
            assert bars["ts"].iloc[-1] <= minute["ts"].iloc[k]  # nothing of an unfinished bar
            if len(bars) < CATALOGUE.max_lookback:
                continue
            live = compute_features(bars)
            for ts, row in zip(live.index, live.to_numpy()):
                if ts in seen and not np.array_equal(seen[ts], row, equal_nan=True):
                    rewritten[timeframe] += 1
                seen[ts] = row
        partial_buckets_seen += raw_5m > (k + 1) // 5  # the view itself shows the bucket still filling
    assert rewritten == {"5m": 0, "15m": 0}
    assert len(readings["5m"]) == 120 and len(readings["15m"]) == 40
    for timeframe, count in (("5m", 120), ("15m", 40)):
        complete = [row for _, row in sorted(readings[timeframe].items())][CATALOGUE.max_lookback - 1:]
        assert len(complete) == count - CATALOGUE.max_lookback + 1 and np.isfinite(np.array(complete)).all()
    assert partial_buckets_seen == MINUTES - MINUTES // 5  # so leaving the unfinished bucket out is what keeps them


DAYS = [date(2024, 3, 5), date(2024, 3, 6), date(2024, 3, 7)]


@pytest.mark.slow  # a trained model and a server; the data layer it reads is repeated on the embedded server above
def test_the_service_serving_a_five_minute_model_recomputes_the_stored_features_bit_for_bit(database,
                                                                                            tmp_path_factory):
    landing = tmp_path_factory.mktemp("landing")
    write_synthetic(SyntheticConfig(days=len(DAYS), start=DAYS[0], instrument=Instrument(symbol="ES"), seed=8,
                                    edge="smc"), landing)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SYMBOLS.name, ["ES"])
    resources = {"database": DatabaseResource(url=database.url),
                 "landing": LandingResource(path=str(landing), resampled="5m")}
    for day in DAYS:
        assert materialize([bars, features], partition_key=bar_partition_key("ES", day), resources=resources,
                           instance=instance).success
    first, _ = CME_EQUITY.session_bounds(DAYS[0])
    _, last = CME_EQUITY.session_bounds(DAYS[-1])
    five = load_bars(database, "ES", "5m", first, last, resampled=True)
    stored = read_features(database, "ES", "5m", first, last, CATALOGUE)
    assert len(five) == len(stored) == 3 * 276
    package = tmp_path_factory.mktemp("pkg") / "model"
    train_small_package(package, {"ES": five}, epochs=1, timeframe="5m")
    server = Server({"MODEL_PATH": str(package), "DATABASE_URL": database.url, "RATE_LIMIT_PER_SECOND": "1000",
                     "RATE_LIMIT_BURST": "2000"}, tmp_path_factory.mktemp("home")).wait()
    try:
        ends = [120, 400, 700]
        ids = []
        for end in ends:
            payload = request_for(five, end)
            payload["metadata"]["timeframe"] = "5m"
            response = server.predict(payload)
            assert response.status_code == 200, response.text
            ids.append(response.json()["request_id"])
        one_minute = request_for(five, 700)  # a 1-minute request to the 5-minute model names the mismatch
        refused = server.predict(one_minute)
        assert refused.status_code == 422 and "5m" in refused.text, refused.text
        deadline, rows = time.monotonic() + 15, []
        while time.monotonic() < deadline and len(rows) < len(ids):
            with database.connection() as conn:
                rows = conn.execute("SELECT request_id, ts, features FROM predictions WHERE request_id = ANY(%s)",
                                    (ids,)).fetchall()
            time.sleep(0.2)
    finally:
        server.stop()
    assert len(rows) == len(ids)
    by_id = {row[0]: row for row in rows}
    for request_id, end in zip(ids, ends):
        _, ts, served = by_id[request_id]
        assert ts == five["ts"].iloc[end].to_pydatetime()
        assert np.array_equal(np.array(served), stored.loc[five["ts"].iloc[end]].to_numpy(), equal_nan=True)
