"""The BentoML service NinjaTrader calls on every closed bar (DESIGN §6).

Why an ASGI app mounted on the BentoML service: BentoML's generated endpoints answer schema
errors with 400 and have no auth, body limit or rate limit; the contract needs 422 with
field paths, 401/413/429/503/504 and one error body ``{error, code, details}``. The mounted
app gives exact control while BentoML runs the process, its /metrics, and packaging.
All behaviour lives in ``smc_core.serving.runtime``; this file only maps HTTP onto it.

Run: ``bentoml serve bento.service:SmcPredictor --port 8000`` (see bento/README.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for `bentoml serve`

from smc_core.serving.request import BarsUpload, PredictRequest, RequestError  # noqa: E402
from smc_core.serving.runtime import Runtime, ServiceSettings, error_body, parse_json  # noqa: E402

app = FastAPI(title="SMC predictor", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
json_log = logging.getLogger("smc.requests")
# Predictions run one at a time on one thread: the model is a few ms of single-threaded
# torch, and a second compute thread only contends (measured: ~10x slower with 2 threads).
_compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
# Uploads wait for the database: they must never hold up the compute thread.
_uploads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload")
UPLOAD_DEADLINE_S = 120.0


class Metrics:
    """Prometheus metrics through bentoml.metrics, exported by BentoML's own /metrics."""

    def __init__(self):
        buckets = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
        self.requests = bentoml.metrics.Counter(name="smc_requests_total", documentation="Requests by endpoint and status",
                                                labelnames=["endpoint", "status"])
        self.latency = bentoml.metrics.Histogram(name="smc_request_seconds", documentation="Request latency",
                                                 labelnames=["endpoint", "status"], buckets=buckets)
        self.labels = bentoml.metrics.Counter(name="smc_predictions_total", documentation="Answers by label",
                                              labelnames=["label"])
        self.confidence = bentoml.metrics.Histogram(name="smc_confidence", documentation="Top-class probability",
                                                    buckets=(0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0))
        self.mismatches = bentoml.metrics.Counter(name="smc_indicator_mismatches_total",
                                                  documentation="Client-sent indicator values differing from the server's",
                                                  labelnames=["feature"])
        self.lost = bentoml.metrics.Counter(name="smc_rows_lost_total",
                                            documentation="Received bars or prediction rows lost: the in-memory queue "
                                                          "or the disk spool was full while the database was away")
        self.conflicts = bentoml.metrics.Counter(name="smc_bar_conflicts_total",
                                                 documentation="Received bars whose values differ from the stored bar "
                                                               "(kept in bar_revisions, never written over it)")
        self.reloads = bentoml.metrics.Counter(name="smc_model_reloads_total", documentation="Model reloads",
                                               labelnames=["result"])
        self.info = bentoml.metrics.Gauge(name="smc_model_info", documentation="1 for the model version being served",
                                          labelnames=["version"], multiprocess_mode="livemax")
        self._version = None

    def prediction(self, body: dict, mismatches: dict) -> None:
        self.labels.labels(label=body["label"]).inc()
        self.confidence.observe(body["confidence"])
        for feature, count in mismatches.items():
            self.mismatches.labels(feature=feature).inc(count)

    def rows_lost(self, count: int) -> None:
        self.lost.inc(count)

    def bar_conflicts(self, count: int) -> None:
        self.conflicts.inc(count)

    def model(self, version, reloaded) -> None:
        if reloaded is not None:
            self.reloads.labels(result="ok" if reloaded else "refused").inc()
        if version != self._version:
            if self._version is not None:
                self.info.labels(version=self._version).set(0)
            if version is not None:
                self.info.labels(version=version).set(1)
            self._version = version

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint, status=str(status)).observe(seconds)


def _runtime() -> Runtime:
    return app.state.runtime


async def _respond(request: Request, endpoint: str, admin: bool, work, needs_body: bool = True,
                   upload: bool = False) -> JSONResponse:
    """Auth, body limit, JSON, the work under TIMEOUT_MS, one error shape, a metric and a JSON log line.

    ``upload``: bulk bars, with their own size limit and deadline, on the upload threads."""
    started = time.perf_counter()
    runtime = _runtime()
    settings = runtime.settings
    limit = settings.upload_max_bytes if upload else settings.max_body_bytes
    body: dict = {}
    try:
        key = request.headers.get("x-admin-key" if admin else "x-api-key")
        runtime.authorize(key, admin=admin)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise RequestError(413, "request body too large", {"limit_bytes": limit, "received_bytes": int(length)})
        raw = await request.body()
        payload = parse_json(raw, limit) if needs_body else None
        future = asyncio.get_running_loop().run_in_executor(_uploads if upload else _compute, work, payload, started)
        budget = UPLOAD_DEADLINE_S if upload else settings.timeout_ms / 1000
        try:
            body = await asyncio.wait_for(future, timeout=max(budget - (time.perf_counter() - started), 0))
        except asyncio.TimeoutError:
            body = None
        # the budget is a deadline: an answer that arrives after it (a busy loop can fire the timer
        # late) is as useless to the strategy as none
        if body is None or time.perf_counter() - started > budget:
            raise RequestError(504, "prediction timed out", {"timeout_ms": runtime.settings.timeout_ms})
        status = 200
    except RequestError as error:
        status, body = error.status, error_body(error)
    except Exception:  # never a traceback to the client
        logging.getLogger("smc.serving").exception("unexpected error")
        status, body = 500, {"error": "internal error", "code": 500, "details": {}}
    seconds = time.perf_counter() - started
    if runtime.metrics is not None:
        runtime.metrics.request(endpoint, status, seconds)
    json_log.info(json.dumps({"ts": time.time(), "endpoint": endpoint, "status": status,
                              "request_id": body.get("request_id"), "label": body.get("label"),
                              "confidence": body.get("confidence"), "latency_ms": round(seconds * 1000, 3),
                              "error_type": body.get("error") if status != 200 else None}))
    return JSONResponse(body, status_code=status)


def _body(schema: dict) -> dict:
    """An OpenAPI request body from a JSON schema; the route still validates by itself (422 format)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "parameters": [{"name": "X-API-Key", "in": "header", "required": True, "schema": {"type": "string"}}]}


_PREDICT_SCHEMA = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
_UPLOAD_SCHEMA = BarsUpload.model_json_schema(ref_template="#/components/schemas/{model}")
_DEFINITIONS = {**_PREDICT_SCHEMA.pop("$defs", {}), **_UPLOAD_SCHEMA.pop("$defs", {})}


def _openapi() -> dict:
    """FastAPI's document plus the request models, so clients and fuzzers see the real contract."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(title=app.title, version="1", routes=app.routes)
        document.setdefault("components", {}).setdefault("schemas", {}).update(
            {**_DEFINITIONS, "PredictRequest": _PREDICT_SCHEMA, "BarsUpload": _UPLOAD_SCHEMA})
        app.openapi_schema = document
    return app.openapi_schema


app.openapi = _openapi


@app.post("/predict", openapi_extra=_body({"$ref": "#/components/schemas/PredictRequest"}))
async def predict(request: Request) -> JSONResponse:
    return await _respond(request, "predict", False, _runtime().predict_payload)


@app.post("/predict_batch", openapi_extra=_body({"type": "object", "required": ["requests"], "properties": {
    "requests": {"type": "array", "items": {"$ref": "#/components/schemas/PredictRequest"}}}}))
async def predict_batch(request: Request) -> JSONResponse:
    def work(payload, started):
        runtime = _runtime()
        if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
            raise RequestError(422, "request validation failed",
                               {"errors": [{"path": "requests", "message": "a list of /predict requests is required"}]})
        items = payload["requests"]
        if len(items) > runtime.settings.max_batch_size:
            raise RequestError(413, "batch too large", {"max_batch_size": runtime.settings.max_batch_size,
                                                        "received": len(items)})
        results = []
        for index, item in enumerate(items):
            try:
                results.append(runtime.predict_payload(item, time.perf_counter()))
            except RequestError as error:
                results.append({**error_body(error), "index": index})
        return {"results": results, "processing_time_ms": (time.perf_counter() - started) * 1000}

    return await _respond(request, "predict_batch", False, work)


@app.post("/bars", openapi_extra=_body({"$ref": "#/components/schemas/BarsUpload"}))
async def upload_bars(request: Request) -> JSONResponse:
    """Bulk bars of one series (a strategy's history at start-up, any other feed): validated like a
    file ingest, stored in one transaction, never written over a stored bar."""
    return await _respond(request, "bars", False, lambda payload, started: _runtime().upload_bars(payload),
                          upload=True)


@app.post("/admin/reload")
async def admin_reload(request: Request) -> JSONResponse:
    return await _respond(request, "admin_reload", True, lambda payload, started: _runtime().reload(),
                          needs_body=False)


@app.get("/health")
async def health() -> JSONResponse:
    return JSONResponse(_runtime().health())


@app.get("/model")
async def model_info(request: Request) -> JSONResponse:
    return await _respond(request, "model", False, lambda payload, started: _runtime().model_info(),
                          needs_body=False)


@bentoml.service(name="smc_predictor", workers=1, traffic={"timeout": 30})
@bentoml.asgi_app(app, path="/")
class SmcPredictor:
    """Loads the champion (or MODEL_PATH), follows the registry alias, serves the mounted app."""

    def __init__(self) -> None:
        logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(message)s")
        if os.environ.get("MODEL_TAG") and not os.environ.get("MODEL_PATH"):
            # a built Bento serves the package packed with it (its label model_tag; bento_artifact's metadata)
            os.environ["MODEL_PATH"] = bentoml.models.get(os.environ["MODEL_TAG"]).path_of("package")
        settings = ServiceSettings.from_env()
        self.runtime = Runtime(settings, metrics=Metrics()).start()
        app.state.runtime = self.runtime

    def __is_ready__(self) -> bool:
        """/readyz: ready only once a verified, warmed-up model is in the slot."""
        return self.runtime.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.runtime.stop()
