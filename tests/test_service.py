"""The BentoML service as a real server process over HTTP: the /predict contract, every error
code with its body, keys, limits, readiness, the prediction log (and its outage), a refused
reload that keeps the old model serving, and feature parity with the batch computation."""

from __future__ import annotations

import json
import shutil
import time
import uuid

import numpy as np
import pytest
from serving_setup import ADMIN, KEY, Server, bars, free_port, request_for

from smc_core.features import CATALOGUE, compute_features


@pytest.fixture(scope="module")
def market():
    return bars(days=3, seed=9)


@pytest.fixture(scope="module")
def server(package, database, tmp_path_factory):
    served = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(package, served)
    home = tmp_path_factory.mktemp("home")
    running = Server({"MODEL_PATH": str(served), "DATABASE_URL": database.url, "MAX_BODY_BYTES": "200000",
                      "RATE_LIMIT_PER_SECOND": "1000", "RATE_LIMIT_BURST": "2000"}, home).wait()
    running.model_dir = served
    yield running
    running.stop()


def test_predict_answers_the_contract(server, market):
    response = server.predict(request_for(market, 700))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"label", "confidence", "probabilities", "processing_time_ms", "model_version", "request_id",
                         "position_size"}
    assert body["model_version"] == "local/model" and uuid.UUID(body["request_id"])
    probabilities = body["probabilities"]
    assert set(probabilities) == {"long", "short", "skip"} and abs(sum(probabilities.values()) - 1) < 1e-9
    assert body["confidence"] == max(probabilities.values())
    # below the threshold the call is reported as skip, probabilities still returned
    if body["confidence"] < body["threshold"] or body["raw_label"] == "skip":
        assert body["label"] == "skip" and body["position_size"] == 0
    else:
        assert body["label"] == body["raw_label"] and body["position_size"] in (0.5, 1.0)


def _broken(market, change):
    payload = json.loads(json.dumps(request_for(market, 700)))
    change(payload)
    return payload


@pytest.mark.parametrize("change, path, words", [
    (lambda p: p["context_bars"][3].update(h=1.0), "context_bars[3]", "below low"),
    (lambda p: p["context_bars"][5].update(volume=-1), "context_bars[5].volume", "greater than or equal to 0"),
    (lambda p: p["context_bars"][6].update(o=-5.0), "context_bars[6].o", "greater than 0"),
    (lambda p: p["current_bar"].update(c=float("nan")), "current_bar.c", "finite"),
    (lambda p: p["context_bars"][10].update(time_utc=p["context_bars"][9]["time_utc"]), "body", "repeats"),
    (lambda p: p["context_bars"].reverse(), "body", "earlier than"),
    (lambda p: p.pop("metadata"), "metadata", "required"),
    (lambda p: p["context_bars"][0].update(time_utc="0001-01-01T00:00:00+01:00"), "context_bars[0].time_utc",
     "no UTC representation"),  # found by schemathesis: was a 500
    (lambda p: p["current_bar"].update(time_utc="2999-01-01T00:00:00Z"), "current_bar.time_utc", "lies outside"),
])
def test_impossible_requests_get_422_with_the_field_path(server, market, change, path, words):
    response = server.client.post("/predict", content=json.dumps(_broken(market, change)).encode(),
                                  headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == 422 and set(body) == {"error", "code", "details"}
    assert any(e["path"] == path and words in e["message"] for e in body["details"]["errors"]), body


def test_transport_errors_have_their_codes_and_no_traceback(server, market):
    malformed = server.client.post("/predict", content=b'{"context_bars": [', headers={"X-API-Key": KEY})
    assert malformed.status_code == 400 and malformed.json()["error"] == "malformed JSON"
    assert server.predict(request_for(market, 700), key=None).status_code == 401
    assert server.predict(request_for(market, 700), key="wrong").status_code == 401
    assert server.predict(request_for(market, 700), key=ADMIN).status_code == 401  # admin key is not a predict key
    assert server.client.post("/predict_batch", json={"requests": []}).status_code == 401
    assert server.client.post("/admin/reload").status_code == 401
    big = server.client.post("/predict", content=b" " * 300_000, headers={"X-API-Key": KEY})
    assert big.status_code == 413 and big.json()["details"]["limit_bytes"] == 200_000
    for response in (malformed, big):
        assert "Traceback" not in response.text
    # health and metrics need no key
    assert server.client.get("/health").status_code == 200
    assert server.client.get("/readyz").status_code == 200
    assert "smc_requests_total" in server.client.get("/metrics").text


def test_model_endpoint_describes_what_is_served(server):
    assert server.client.get("/model").status_code == 401
    info = server.client.get("/model", headers={"X-API-Key": KEY}).json()
    assert info["required_bars"] == 49 and info["features"] == list(CATALOGUE.names)
    assert info["thresholds"] == {"half_size": 0.55, "full_size": 0.7}
    # the runtime serving it, and why: the package's ONNX graph, chosen only when it answers like torch
    inference = info["inference"]
    assert inference["backend"] in ("torch", "onnxruntime") and inference["threads"] == 1
    assert inference["max_probability_difference"] <= 1e-5
    assert server.client.get("/health").json()["inference_backend"] == inference["backend"]


def test_concurrent_requests_answer_as_they_do_one_at_a_time(server, market):
    """Requests arriving together run as one micro-batch on the compute thread; each answer is
    the one it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    ends = list(range(600, 1400, 50))
    alone = [server.predict(request_for(market, end)).json() for end in ends]
    with ThreadPoolExecutor(len(ends)) as pool:
        together = list(pool.map(lambda end: server.predict(request_for(market, end)), ends))
    for one, response in zip(alone, together):
        assert response.status_code == 200, response.text
        batched = response.json()
        assert batched["label"] == one["label"] and batched["risk"] == one["risk"]
        assert max(abs(batched["probabilities"][k] - one["probabilities"][k]) for k in one["probabilities"]) <= 1e-6


def test_predict_batch_answers_each_item(server, market):
    good, bad = request_for(market, 700), _broken(market, lambda p: p["current_bar"].update(h=0.0))
    response = server.client.post("/predict_batch", json={"requests": [good, bad]}, headers={"X-API-Key": KEY})
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["label"] in ("long", "short", "skip") and results[1]["code"] == 422 and results[1]["index"] == 1


def test_logged_features_equal_the_batch_computation_bit_for_bit(server, market, database):
    ends = [650, 800, 1200]
    ids = [server.predict(request_for(market, end)).json()["request_id"] for end in ends]
    batch = compute_features(market)
    deadline = time.monotonic() + 15
    rows = []
    while time.monotonic() < deadline and len(rows) < len(ids):
        with database.connection() as conn:
            rows = conn.execute("SELECT request_id, ts, features, feature_set FROM predictions "
                                "WHERE request_id = ANY(%s)", (ids,)).fetchall()
        time.sleep(0.2)
    assert len(rows) == len(ids)
    by_id = {r[0]: r for r in rows}
    for request_id, end in zip(ids, ends):
        _, ts, features, feature_set = by_id[request_id]
        assert feature_set == CATALOGUE.version and ts == market["ts"].iloc[end].to_pydatetime()
        assert np.array_equal(np.array(features), batch.iloc[end].to_numpy(), equal_nan=True)


def test_indicator_mismatches_are_counted_per_feature(server, market):
    payload = request_for(market, 700)
    payload["current_bar"]["atr"] = 12345.0
    payload["current_bar"]["ext_dir"] = 1 if compute_features(market).iloc[700]["ext_dir"] != 1 else -1
    assert server.predict(payload).status_code == 200
    metrics = server.client.get("/metrics").text
    assert 'smc_indicator_mismatches_total{feature="atr"}' in metrics
    assert 'smc_indicator_mismatches_total{feature="ext_dir"}' in metrics


def test_a_broken_package_is_refused_and_the_old_model_keeps_serving(server, market):
    (server.model_dir / "calibration.json").write_text('{"temperature": 0.5}')  # altered after the manifest
    response = server.client.post("/admin/reload", headers={"X-Admin-Key": ADMIN})
    assert response.status_code == 409 and "altered" in response.json()["details"]["reason"]
    assert server.client.post("/admin/reload", headers={"X-Admin-Key": KEY}).status_code == 401
    assert server.predict(request_for(market, 700)).status_code == 200
    health = server.client.get("/health").json()
    assert health["model_version"] == "local/model" and "altered" in health["last_reload_error"]
    assert 'smc_model_reloads_total{result="refused"}' in server.client.get("/metrics").text


@pytest.fixture(scope="module")
def degraded(package, tmp_path_factory):
    """A server whose database is unreachable and whose time budget is 1 ms."""
    home = tmp_path_factory.mktemp("degraded")
    running = Server({"MODEL_PATH": str(package), "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/x",
                      "TIMEOUT_MS": "1", "RATE_LIMIT_PER_SECOND": "1", "RATE_LIMIT_BURST": "3"}, home).wait()
    yield running
    running.stop()


def test_timeouts_rate_limits_and_a_database_outage(degraded, market):
    answers = [degraded.predict(request_for(market, 700 + i)) for i in range(5)]
    codes = [a.status_code for a in answers]
    assert codes[:3] == [504, 504, 504] and 429 in codes[3:]
    assert answers[0].json()["details"] == {"timeout_ms": 1.0}
    assert answers[-1].json()["error"] == "rate limit exceeded"
    deadline = time.monotonic() + 20  # the timed-out predictions finish; their log rows wait in the spool
    while time.monotonic() < deadline and not degraded.client.get("/health").json()["prediction_log"]["spooled"]:
        time.sleep(0.5)
    health = degraded.client.get("/health").json()
    assert health["prediction_log"]["spooled"] >= 1 and health["prediction_log"]["dropped"] == 0
    assert health["storage"] == "spooling"
    assert "smc_rows_lost_total" in degraded.client.get("/metrics").text


def test_not_ready_without_a_model(tmp_path_factory, market):
    home = tmp_path_factory.mktemp("empty")
    running = Server({"DATABASE_URL": "", "LOG_PREDICTIONS": "false"}, home).wait(ready=False)
    try:
        assert running.client.get("/readyz").status_code != 200
        response = running.predict(request_for(market, 700))
        assert response.status_code == 503 and response.json()["code"] == 503
        assert running.client.get("/health").json()["model_loaded"] is False
    finally:
        running.stop()


def test_keys_are_required_unless_dev_mode():
    from smc_core.errors import ConfigError
    from smc_core.serving.runtime import ServiceSettings

    with pytest.raises(ConfigError, match="API_KEY and ADMIN_API_KEY must be set"):
        ServiceSettings.from_env({})
    assert ServiceSettings.from_env({"SMC_DEV_MODE": "1"}).dev_mode
    with pytest.raises(ConfigError, match="TIMEOUT_MS='fast' is not a float"):
        ServiceSettings.from_env({"SMC_DEV_MODE": "1", "TIMEOUT_MS": "fast"})


def test_replay_streams_a_stored_day_through_the_service(server, database, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from smc_core.ingest import ingest_file
    from smc_core.synthetic import SyntheticConfig, write_synthetic
    from smc_jobs.cli import cli

    paths = write_synthetic(SyntheticConfig(days=2, seed=9, edge="smc", edge_strength=0.9), tmp_path)
    for path in paths:
        ingest_file(database, path, "ES", "1m")
    monkeypatch.setenv("DATABASE_URL", database.url)
    result = CliRunner().invoke(cli, ["replay", "--symbol", "ES", "--day", "2024-01-03", "--url", server.url,
                                      "--api-key", KEY])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["requests"] == 1380 and sum(summary["signals"].values()) == 1380
    assert summary["versions"] == ["local/model"] and summary["latency_p50_ms"] > 0
    assert np.isfinite(summary["net_pnl"])


def _mutations():
    from hypothesis import strategies as st

    junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                     st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                              st.integers(), max_size=2))
    fields = st.sampled_from(["time_utc", "o", "h", "l", "c", "volume", "delta", "ext_dir", "has_fvg_bull", "atr"])
    where = st.one_of(st.just("current_bar"), st.integers(0, 47))
    top = st.sampled_from(["context_bars", "current_bar", "features", "metadata"])
    return st.one_of(st.tuples(st.just("bar"), where, fields, junk), st.tuples(st.just("top"), top, st.just(""), junk),
                     st.tuples(st.just("drop"), where, fields, st.none()))


def test_fuzzed_requests_never_get_a_5xx(server, market):
    """Schema-directed fuzzing of /predict over HTTP: any mutation is answered 200, 400 or 422."""
    from hypothesis import HealthCheck, given, settings

    base = request_for(market, 700)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_mutations())
    def check(mutation):
        kind, where, field, value = mutation
        payload = json.loads(json.dumps(base))
        if kind == "top":
            payload[where] = value
        else:
            bar = payload["current_bar"] if where == "current_bar" else payload["context_bars"][where]
            if kind == "drop":
                bar.pop(field, None)
            else:
                bar[field] = value
        response = server.client.post("/predict", content=json.dumps(payload).encode(), headers={"X-API-Key": KEY})
        assert response.status_code in (200, 400, 422), (mutation, response.status_code, response.text)
        body = response.json()
        assert ("label" in body) if response.status_code == 200 else set(body) == {"error", "code", "details"}

    check()


def test_every_request_writes_one_json_log_line(server, market):
    """The README's per-request line: one JSON object per line on the server's stdout (BentoML's
    logging config dropped it before)."""
    answered = server.predict(request_for(market, 700)).json()
    refused = server.client.post("/predict", content=b"{", headers={"X-API-Key": KEY})
    assert refused.status_code == 400
    deadline = time.monotonic() + 10
    lines = []
    while time.monotonic() < deadline and len(lines) < 2:
        records = [json.loads(line) for line in open(server.log.name) if line.startswith("{")]
        lines = [r for r in records if r["request_id"] == answered["request_id"]] + [
            r for r in records if r["status"] == 400 and r["error_type"] == "malformed JSON"]
        time.sleep(0.2)
    ok = lines[0]
    assert set(ok) == {"ts", "endpoint", "status", "request_id", "label", "confidence", "model_version",
                       "latency_ms", "error_type"}
    assert ok["endpoint"] == "predict" and ok["status"] == 200 and ok["label"] == answered["label"]
    assert ok["model_version"] == "local/model" and ok["latency_ms"] > 0 and ok["error_type"] is None
    assert abs(ok["ts"] - time.time()) < 60
    assert lines[1]["request_id"] is None and lines[1]["endpoint"] == "predict"


def test_metric_names_and_labels(server, market):
    assert server.predict(request_for(market, 710)).status_code == 200
    metrics = server.client.get("/metrics").text
    assert 'smc_request_duration_seconds_bucket{endpoint="predict",le="0.001",status="200"}' in metrics
    assert 'smc_prediction_confidence_ratio_bucket{le="0.4",version="local/model"}' in metrics
    assert any(line.startswith("smc_predictions_total{") and 'version="local/model"' in line
               for line in metrics.splitlines())
    # BentoML's own metrics carry the service's version (the project's, when served from source)
    assert 'service_name="smc_predictor",service_version="0.1.0"' in metrics
    for old in ("smc_request_seconds", "smc_confidence_bucket"):
        assert old not in metrics


def test_keys_are_in_the_openapi_document_when_required(server):
    document = server.client.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"ApiKey", "AdminKey"}
    assert document["paths"]["/predict"]["post"]["security"] == [{"ApiKey": []}]
    assert document["paths"]["/admin/reload"]["post"]["security"] == [{"AdminKey": []}]
    assert "security" not in document["paths"]["/health"]["get"]
    assert {"401", "429"} <= set(document["paths"]["/predict"]["post"]["responses"])


def test_schemathesis_with_every_check_passes(server, tmp_path):
    """Schemathesis runs all its checks (`--checks all`) in all its phases against the running
    service's own /openapi.json: documented statuses and bodies only, no 5xx, schema-valid
    requests answered or refused as documented, schema-violating ones refused, keys enforced,
    405 with Allow for undeclared methods. tests/schemathesis.toml says which refusals count."""
    import subprocess
    import sys
    from pathlib import Path

    config = Path(__file__).parent / "schemathesis.toml"
    command = [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run",
               f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "40", "--seed", "19",
               "--workers", "1", "--no-color", "-H", f"X-API-Key: {KEY}", "-H", f"X-Admin-Key: {ADMIN}",
               "--report", "junit", "--report-dir", str(tmp_path)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and time.monotonic() - started < 120
