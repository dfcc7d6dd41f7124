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
from serving_setup import ADMIN, KEY, Server, request_for

from smc_assets.bars import bars
from smc_assets.features import features
from smc_assets.partitions import SYMBOLS, bar_partition_key
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.calendar import CME_EQUITY
from smc_core.features import CATALOGUE, compute_features
from smc_core.ingest import write_live_bars, write_logged
from smc_core.model.pipeline import train_small_package
from smc_core.serving.replay import replay_stored_day
from smc_core.store import _frame, _rows_next_to, load_bars, read_features
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


def test_a_replay_of_one_minute_bars_as_they_arrive_rewrites_no_hourly_reading(database):
    """The 1-hour timeframe, replayed as 1-minute bars arrive in uneven batches (1 to 9 minutes,
    so most steps end inside an hour): 40 hours of bars, the hourly features recomputed from the
    database after each batch, 0 readings rewritten, and an hour still filling never read."""
    minute = generate_bars(SyntheticConfig(days=2, seed=13)).iloc[:2400].reset_index(drop=True)
    start, end = minute["ts"].iloc[0] - pd.Timedelta("1h"), minute["ts"].iloc[-1]
    rng = np.random.default_rng(13)
    seen: dict[pd.Timestamp, np.ndarray] = {}
    rewritten = steps = inside_an_hour = 0
    k = 0
    while k < len(minute):
        batch = minute.iloc[k:k + int(rng.integers(1, 10))]
        k += len(batch)
        with database.connection() as conn:
            write_live_bars(conn, "RH", "1m", batch, "test:hourly")
        bars = load_bars(database, "RH", "1h", start, end, resampled=True)
        newest = minute["ts"].iloc[k - 1]
        assert len(bars) == 0 or bars["ts"].iloc[-1] <= newest  # nothing of an unfinished hour
        inside_an_hour += newest.minute != 0
        steps += 1
        if len(bars) < CATALOGUE.max_lookback:
            continue
        live = compute_features(bars)
        for ts, row in zip(live.index, live.to_numpy()):
            if ts in seen and not np.array_equal(seen[ts], row, equal_nan=True):
                rewritten += 1
            seen[ts] = row
    assert rewritten == 0
    assert len(seen) == 40 and np.isfinite(np.array(seen[max(seen)])).all()
    assert steps > 400 and inside_an_hour > 0.9 * steps


def test_ranged_resampled_reads_equal_the_whole_views_rows_across_gaps(database):
    """Resampled reads bound the 1-minute bars they aggregate (sql/016): the same bars as the
    unbounded views, finished buckets only, for ranges, history and the bars after an edge, on
    data with session breaks and missing minutes."""
    minute = generate_bars(SyntheticConfig(days=3, seed=5))
    kept = np.random.default_rng(5).random(len(minute)) > 0.07
    minute = minute[kept].iloc[:-2].reset_index(drop=True)  # end inside a bucket: one still filling
    write_logged(database, source="gaps", sha256=None, fmt="test", symbol="RG", timeframe="1m", frame=minute,
                 rows_read=len(minute), rejections=[])
    newest = minute["ts"].iloc[-1]
    rng = np.random.default_rng(6)
    for timeframe in ("5m", "15m", "1h"):
        with database.connection() as conn:
            view = _frame(conn.execute(f"SELECT ts, open, high, low, close, volume, delta FROM bars_{timeframe} "
                                       "WHERE symbol = 'RG' AND ts <= %s ORDER BY ts", (newest,)).fetchall())
        assert view["ts"].iloc[-1] <= newest
        for _ in range(6):
            start, end = sorted(rng.choice(minute["ts"].to_numpy(), 2, replace=False))
            start, end = pd.Timestamp(start), pd.Timestamp(end) + pd.Timedelta(rng.integers(0, 2), "h")
            history = int(rng.integers(1, 60))
            got = load_bars(database, "RG", timeframe, start, end, history=history, resampled=True)
            inside = view[(view["ts"] > start) & (view["ts"] <= end)]
            expected = pd.concat([view[view["ts"] <= start].tail(history), inside], ignore_index=True)
            pd.testing.assert_frame_equal(got, expected)
            future = int(rng.integers(1, 60))
            with database.connection() as conn:
                after = _frame(_rows_next_to(conn, "RG", timeframe, True, end, future, "after"))
            pd.testing.assert_frame_equal(after, view[view["ts"] > end].head(future).reset_index(drop=True))


DAYS = [date(2024, 3, 5), date(2024, 3, 6), date(2024, 3, 7)]


@pytest.mark.slow  # trained models and a server; the data layer it reads is repeated on the embedded server above
def test_one_service_serves_a_line_per_timeframe_with_the_stored_features_bit_for_bit(database, tmp_path_factory):
    """Two model lines in one process (MODEL_PATH lists a 1-minute and a 5-minute package): each
    request goes to the line of its metadata.timeframe, is answered by that line's model, and
    the features it logs are exactly the ones the `features` asset stored for that timeframe."""
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
    series = {timeframe: load_bars(database, "ES", timeframe, first, last, resampled=timeframe != "1m")
              for timeframe in ("1m", "5m")}
    stored = {timeframe: read_features(database, "ES", timeframe, first, last, CATALOGUE) for timeframe in series}
    assert len(series["5m"]) == len(stored["5m"]) == 3 * 276 and len(stored["1m"]) == 3 * 1380
    packages = tmp_path_factory.mktemp("packages")
    for timeframe, frame in series.items():
        train_small_package(packages / f"model-{timeframe}", {"ES": frame}, epochs=1, timeframe=timeframe)
    server = Server({"MODEL_PATH": f"{packages / 'model-1m'},{packages / 'model-5m'}", "DATABASE_URL": database.url,
                     "RATE_LIMIT_PER_SECOND": "1000", "RATE_LIMIT_BURST": "2000"},
                    tmp_path_factory.mktemp("home")).wait()
    try:
        described = server.client.get("/model", headers={"X-API-Key": KEY})
        assert described.status_code == 200, described.text
        lines = described.json()["lines"]
        assert [(line["timeframe"], line["horizon"], line["model_version"]) for line in lines] == [
            ("1m", "h15_u1.5_d1.5", "local/model-1m"), ("5m", "h15_u1.5_d1.5", "local/model-5m")]
        assert [line["model_version"] for line in server.client.get("/health").json()["lines"]] == [
            "local/model-1m", "local/model-5m"]
        schema = server.client.get("/openapi.json").json()["components"]["schemas"]["Metadata"]["properties"]
        assert schema["timeframe"]["enum"] == ["1m", "5m"] and "horizon" in schema
        sent = []  # (timeframe, row, request id)
        for timeframe, ends in (("1m", [600, 2000, 4000]), ("5m", [120, 400, 700])):
            for end in ends:
                payload = request_for(series[timeframe], end)
                payload["metadata"]["timeframe"] = timeframe
                if end == ends[-1]:
                    payload["metadata"]["horizon"] = "h15"  # naming the line's horizon routes the same way
                response = server.predict(payload)
                assert response.status_code == 200, response.text
                assert response.json()["model_version"] == f"local/model-{timeframe}"
                sent.append((timeframe, end, response.json()["request_id"]))
        unserved = request_for(series["5m"], 300)
        unserved["metadata"]["timeframe"] = "15m"
        refused = server.predict(unserved)
        assert refused.status_code == 422
        assert refused.json()["details"]["errors"] == [{
            "path": "metadata.timeframe",
            "message": "no model line serves 15m: this service serves 1m (h15_u1.5_d1.5), 5m (h15_u1.5_d1.5)"}]
        other_horizon = request_for(series["5m"], 300)
        other_horizon["metadata"].update(timeframe="5m", horizon="h60")
        refused = server.predict(other_horizon)
        assert refused.status_code == 422 and refused.json()["details"]["errors"][0]["path"] == "metadata.horizon"
        for timeframe in ("5m", "1m"):  # a stored day, bar by bar through the service, as NinjaTrader would
            def predict(payload: dict) -> dict:
                response = server.predict(payload)
                assert response.status_code == 200, response.text
                return response.json()

            report = replay_stored_day(database, "ES", DAYS[2], predict, timeframe=timeframe,
                                       resampled=timeframe == "5m")
            assert report.requests == (1380 if timeframe == "1m" else 276)
            assert report.versions == {f"local/model-{timeframe}"}
        # a reload that one line refuses (its package no longer verifies) keeps that line's model and
        # names it; the other line reloads and both go on answering
        next((packages / "model-5m").rglob("*.safetensors")).write_bytes(b"not weights")
        reloaded = server.client.post("/admin/reload", headers={"X-Admin-Key": ADMIN})
        assert reloaded.status_code == 409, reloaded.text
        assert reloaded.json()["details"]["line"].endswith("model-5m")
        assert reloaded.json()["details"]["serving"] == "local/model-5m"
        errors = [line["last_reload_error"] for line in server.client.get("/health").json()["lines"]]
        assert errors[0] is None and errors[1]
        for timeframe, end in (("1m", 2000), ("5m", 400)):
            payload = request_for(series[timeframe], end)
            payload["metadata"]["timeframe"] = timeframe
            answer = server.predict(payload)
            assert answer.status_code == 200 and answer.json()["model_version"] == f"local/model-{timeframe}"
        ids = [request_id for _, _, request_id in sent]
        deadline, rows = time.monotonic() + 15, []
        while time.monotonic() < deadline and len(rows) < len(ids):
            with database.connection() as conn:
                rows = conn.execute("SELECT request_id, ts, timeframe, model_version, features FROM predictions "
                                    "WHERE request_id = ANY(%s)", (ids,)).fetchall()
            time.sleep(0.2)
    finally:
        server.stop()
    assert len(rows) == len(ids)
    by_id = {row[0]: row for row in rows}
    for timeframe, end, request_id in sent:
        _, ts, logged_timeframe, version, served = by_id[request_id]
        bar_time = series[timeframe]["ts"].iloc[end]
        assert (ts, logged_timeframe, version) == (bar_time.to_pydatetime(), timeframe, f"local/model-{timeframe}")
        assert np.array_equal(np.array(served), stored[timeframe].loc[bar_time].to_numpy(), equal_nan=True)


def test_a_line_still_loading_holds_readiness_and_its_requests_and_a_horizon_picks_among_lines(package, tmp_path):
    """Routing decided both ways without a server: a request for a line whose model is not loaded
    yet is a 503 (the service is not ready), one for a loaded line goes to it; with two 1-minute
    lines, a named horizon picks the one serving it and an unserved one is a 422 on the horizon."""
    from smc_core.serving.engine import load_model
    from smc_core.serving.request import RequestError
    from smc_core.serving.runtime import Runtime, ServiceSettings

    settings = ServiceSettings.from_env({"SMC_DEV_MODE": "1", "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false",
                                         "SMC_HOME": str(tmp_path), "MODEL_PATH": f"{tmp_path / 'a'},{tmp_path / 'b'}"})
    runtime = Runtime(settings)
    first, second = runtime.lines
    first.slot.swap(load_model(package, "local/a"))
    payload = {"metadata": {"symbol": "ES", "timeframe": "1m"}}
    assert not runtime.ready and runtime.line_for(payload) is first
    with pytest.raises(RequestError) as loading:
        runtime.line_for({"metadata": {"symbol": "ES", "timeframe": "5m"}})
    assert loading.value.status == 503 and loading.value.details == {"lines_loading": [str(tmp_path / "b")]}

    second.slot.swap(load_model(package, "local/b"))
    assert runtime.ready
    assert runtime.line_for({"metadata": {"symbol": "ES", "timeframe": "1m", "horizon": "h15"}}) is first
    with pytest.raises(RequestError) as unserved:
        runtime.line_for({"metadata": {"symbol": "ES", "timeframe": "1m", "horizon": "h60"}})
    assert unserved.value.status == 422
    assert unserved.value.details["errors"][0]["path"] == "metadata.horizon"
    with pytest.raises(RequestError) as other:
        runtime.line_for({"metadata": {"symbol": "ES", "timeframe": "5m"}})
    assert other.value.status == 422 and other.value.details["errors"][0]["path"] == "metadata.timeframe"
