"""The boundary with the trading world, over HTTP against the real service: requests checked
against the model, short requests completed from stored bars, the risk block the strategy
trades, POST /bars (validation, idempotence, conflicts); and in process: a full spool is
counted and alerted, a file ingest corrects a live bar and says so."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from serving_setup import KEY, DatabaseProxy, Server, bars, request_for

from smc_core.alerts import recent_alerts
from smc_core.features import compute_features
from smc_core.ingest import ingest_file
from smc_core.serving.replay import request_payload
from smc_core.serving.runtime import Runtime, ServiceSettings


@pytest.fixture(scope="module")
def market():
    return bars(days=3, seed=9)


@pytest.fixture(scope="module")
def server(package, database, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    running = Server({"MODEL_PATH": str(package), "DATABASE_URL": database.url, "RATE_LIMIT_PER_SECOND": "100000",
                      "UPLOAD_MAX_BARS": "2000"}, home).wait()
    yield running
    running.stop()


def upload(server: Server, frame: pd.DataFrame, symbol: str = "ES", timeframe: str = "1m", **changes):
    records = request_payload(frame, symbol, timeframe)
    body = {"symbol": symbol, "timeframe": timeframe, "bars": [*records["context_bars"], records["current_bar"]],
            **changes}
    return server.client.post("/bars", json=body, headers={"X-API-Key": KEY})


def stored_count(database, symbol: str = "ES") -> int:
    with database.connection() as conn:
        return conn.execute("SELECT count(*) FROM bars WHERE symbol = %s", (symbol,)).fetchone()[0]


def test_upload_is_validated_like_a_file_atomic_and_idempotent(server, database, market):
    broken = json.loads(json.dumps(request_payload(market.iloc[:300], "ES", "1m")))
    records = [*broken["context_bars"], broken["current_bar"]]
    records[7]["h"] = records[7]["l"] - 1          # high below low
    records[12]["time_utc"] = records[11]["time_utc"]  # a repeated time
    records[20]["volume"] = "many"
    answer = server.client.post("/bars", json={"symbol": "ES", "timeframe": "1m", "bars": records},
                                headers={"X-API-Key": KEY})
    assert answer.status_code == 422, answer.text
    paths = {error["path"]: error["message"] for error in answer.json()["details"]["errors"]}
    assert {"bars[7]", "bars[20]"} <= set(paths) and "below" in paths["bars[7]"] and "many" in paths["bars[20]"]
    assert any("bars[1" in path for path in paths)  # the duplicate time names its rows
    assert stored_count(database) == 0  # atomic: nothing of a refused upload is stored

    first = upload(server, market.iloc[:300])
    assert first.status_code == 200, first.text
    assert first.json() | {"ingest_id": 0} == {
        "symbol": "ES", "timeframe": "1m", "received": 300, "inserted": 300, "unchanged": 0, "conflicting": 0,
        "ingest_id": 0, "first_bar": market["ts"].iloc[0].isoformat(), "last_bar": market["ts"].iloc[299].isoformat()}
    again = upload(server, market.iloc[:300]).json()
    assert (again["inserted"], again["unchanged"], again["conflicting"]) == (0, 300, 0)

    changed = market.iloc[290:300].copy()
    changed.loc[changed.index[-1], ["high", "close"]] += 1.0
    conflict = upload(server, changed).json()
    assert (conflict["inserted"], conflict["unchanged"], conflict["conflicting"]) == (0, 9, 1)
    with database.connection() as conn:
        stored_high = conn.execute("SELECT high FROM bars WHERE ts = %s", (market["ts"].iloc[299],)).fetchone()[0]
        revisions = conn.execute("SELECT kind, applied, stored_high, incoming_high FROM bar_revisions").fetchall()
    assert stored_high == market["high"].iloc[299]  # never written over silently
    assert revisions == [("live_conflict", False, market["high"].iloc[299], market["high"].iloc[299] + 1.0)]
    assert 'smc_bar_conflicts_total' in server.client.get("/metrics").text

    assert upload(server, market.iloc[:10], timeframe="1x").json()["details"]["errors"][0]["path"] == "timeframe"
    assert upload(server, market.iloc[:10], symbol="es").json()["details"]["errors"][0]["path"] == "symbol"
    too_many = upload(server, market.iloc[:2001])
    assert too_many.status_code == 413 and too_many.json()["details"]["max_bars"] == 2000
    assert server.client.post("/bars", json={"symbol": "ES"}).status_code == 401


def test_short_requests_are_completed_from_stored_bars(server, market):
    """The seed allows 30 context bars; the model needs 49: the uploaded history fills the gap."""
    end = 299  # the history above ends here
    answer = server.predict(request_for(market, end, count=30))
    assert answer.status_code == 200, answer.text
    assert answer.json()["bars_from_store"] == 19
    full = server.predict(request_for(market, end, count=49)).json()
    assert full["bars_from_store"] == 0 and full["probabilities"] == answer.json()["probabilities"]
    # the next bar arrives with 30 bars again: its predecessors are known from the requests before
    nxt = server.predict(request_for(market, end + 1, count=30))
    assert nxt.status_code == 200 and nxt.json()["bars_from_store"] == 19

    unseen = server.predict(request_for(market, 2000, count=30))  # nothing stored before this stretch
    assert unseen.status_code == 422
    details = unseen.json()["details"]
    assert details["missing_bars"] == 19 and "send 19 more" in details["errors"][0]["message"]
    # its bars were kept all the same: the next 30-bar request finds the one before it
    assert server.predict(request_for(market, 2001, count=30)).json()["details"]["missing_bars"] == 18


@pytest.mark.parametrize("change, path, words", [
    (lambda p: p["metadata"].update(timeframe="5m"), "metadata.timeframe", "serves 1m bars"),
    (lambda p: p["metadata"].update(timeframe="1x"), "metadata.timeframe", "not valid"),
    (lambda p: p["metadata"].update(symbol="NQ"), "metadata.symbol", "not served"),
])
def test_requests_not_for_this_model_are_refused(server, market, change, path, words):
    payload = request_for(market, 700)
    change(payload)
    answer = server.predict(payload)
    assert answer.status_code == 422, answer.text
    error = answer.json()["details"]["errors"][0]
    assert error["path"] == path and words in error["message"], error


def test_a_five_minute_chart_sent_as_one_minute_is_refused(server, market):
    five = market.set_index("ts").resample("5min", label="right", closed="right").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum", "delta": "sum"}).dropna()
    answer = server.predict(request_payload(five.reset_index().iloc[100:149], "ES", "1m"))
    assert answer.status_code == 422
    error = answer.json()["details"]["errors"][0]
    assert error["path"] == "context_bars" and "5 min apart" in error["message"] and "not a 1m series" in error["message"]


def test_every_answer_carries_the_risk_block_of_the_server_atr(server, market):
    for end in range(700, 760):
        body = server.predict(request_for(market, end)).json()
        atr = compute_features(market.iloc[end - 48: end + 1])["atr"].iloc[-1]
        risk = body["risk"]
        assert risk["atr"] == pytest.approx(atr, rel=1e-12)
        assert risk["stop_distance"] == max(1, round(1.5 * atr / 0.25)) * 0.25  # default terms, whole ticks
        assert risk["target_distance"] == max(1, round(1.5 * atr / 0.25)) * 0.25
        assert risk["max_holding_bars"] is None and risk["tick_size"] == 0.25
        close = market["close"].iloc[end]
        if body["label"] == "long":
            assert (risk["stop_price"], risk["target_price"]) == (close - risk["stop_distance"],
                                                                  close + risk["target_distance"])
        elif body["label"] == "short":
            assert (risk["stop_price"], risk["target_price"]) == (close + risk["stop_distance"],
                                                                  close - risk["target_distance"])
        else:
            assert risk["stop_price"] is None and risk["target_price"] is None
    schema = server.client.get("/openapi.json").json()["components"]["schemas"]
    assert "BarsUpload" in schema


def test_a_full_spool_is_counted_shown_and_alerted(package, database, market, tmp_path):
    proxy = DatabaseProxy(database.url)  # not listening: the database is away from the start
    settings = ServiceSettings.from_env({"SMC_DEV_MODE": "1", "MODEL_PATH": str(package), "SMC_HOME": str(tmp_path),
                                         "SPOOL_MAX_MB": "1"})
    from smc_core.db import Database

    runtime = Runtime(settings, database=Database(proxy.url)).start()
    started = pd.Timestamp.now(tz="UTC")
    try:
        for end in range(100, 2600):
            runtime.predict_payload(request_for(market, end), time.perf_counter())
        deadline = time.monotonic() + 60  # until every row has gone to the spool or been lost
        while time.monotonic() < deadline and (runtime.health()["prediction_log"]["queued"]
                                               or runtime.health()["bar_capture"]["queued"]):
            time.sleep(0.2)
        health = runtime.health()
        assert health["prediction_log"]["dropped"] > 0 and health["storage"] == "losing rows"
        assert health["prediction_log"]["spool_bytes"] <= 1024 * 1024
        lost = health["prediction_log"]["dropped"] + health["bar_capture"]["dropped"]
        proxy.restore()  # the database is back: what was spooled is written, the loss is alerted
        assert runtime.flush(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(a["details"]["rows"] for a in recent_alerts(database, "rows_lost")) < lost:
            time.sleep(0.5)
        alerts = recent_alerts(database, "rows_lost")
        assert sum(a["details"]["rows"] for a in alerts) == lost and "spool" in alerts[0]["message"]
        with database.connection() as conn:
            logged = conn.execute("SELECT count(*) FROM predictions WHERE logged_at >= %s", (started,)).fetchone()[0]
        assert logged == 2500 - health["prediction_log"]["dropped"]
    finally:
        runtime.stop()
        proxy.cut()


def test_a_file_ingest_corrects_live_bars_and_records_it(database, market, tmp_path):
    from smc_core.ingest import write_live_bars

    live = market.iloc[:5].copy().reset_index(drop=True)
    live["ts"] = live["ts"] + pd.Timedelta(days=30)  # a stretch of its own in this module's database
    with database.connection() as conn:
        write_live_bars(conn, "CL", "1m", live, "live:predict")
    exported = live.copy()
    exported.loc[2, ["high", "close"]] += 0.5
    path = tmp_path / "CL.csv"
    exported.assign(ts=exported["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    report = ingest_file(database, path, "CL", "1m")
    assert (report.rows_updated, report.rows_unchanged) == (1, 4)
    with database.connection() as conn:
        high = conn.execute("SELECT high FROM bars WHERE symbol = 'CL' AND ts = %s", (live["ts"][2],)).fetchone()[0]
        kind, applied, source, old, new = conn.execute(
            "SELECT kind, applied, source, stored_high, incoming_high FROM bar_revisions WHERE symbol = 'CL'").fetchone()
    assert high == live["high"][2] + 0.5  # the file is the authority
    assert (kind, applied, source, old, new) == ("file_correction", True, str(path), live["high"][2], high)
