"""The BentoML service NinjaTrader calls on every closed bar (DESIGN §6).

Why an ASGI app mounted on the BentoML service: BentoML's generated endpoints answer schema
errors with 400 and have no auth, body limit or rate limit; the contract needs 422 with
field paths, 401/413/429/503/504 and one error body ``{error, code, details}``. The mounted
app gives exact control while BentoML runs the process, its /metrics, and packaging. The
routes are methods of the service class (BentoML injects the instance as ``self``).
All behaviour lives in ``smc_core.serving.runtime``; this file only maps HTTP onto it, and
``bento/openapi.py`` describes it (/docs, /redoc, /openapi.json; ``/`` leads to /docs).

Run: ``bentoml serve bento.service:SmcPredictor --port 8000`` (see bento/README.md).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import logging.handlers
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
from fastapi import FastAPI, Request, WebSocket
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for `bentoml serve`

from bento.openapi import (ASSETS_URL, ERRORS, PREDICT_422, assets_dir, document, example_request,  # noqa: E402
                           project, redoc_page, request_body, responses, swagger_page)
from smc_core.serving import signal_history  # noqa: E402
from smc_core.serving.answers import (BarsAnswer, BatchAnswer, HaltAnswer, Health, ModelInfo,  # noqa: E402
                                      PredictAnswer, ReloadAnswer, SignalAnalytics, SignalDetail, SignalPage)
from smc_core.serving.batcher import MicroBatcher  # noqa: E402
from smc_core.serving.request import RequestError  # noqa: E402
from smc_core.jsonable import dump_json  # noqa: E402
from smc_core.serving.runtime import Runtime, ServerOptions, ServiceSettings, error_body, parse_json  # noqa: E402
from smc_core.serving.signals import parse_filter, serve_client  # noqa: E402

PROJECT = project()
EXAMPLE = example_request()
SERVER = ServerOptions.from_env()
app = FastAPI(title=PROJECT.title, version=PROJECT.version, docs_url=None, redoc_url=None, openapi_url=None)


async def _service_instance():
    """The service instance as an async dependency: BentoML binds ``self`` of each route with a
    plain function, which FastAPI runs in a worker thread: a thread hop on every request."""
    return bentoml.get_current_service()


app.dependency_overrides[bentoml.get_current_service] = _service_instance
app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
json_log = logging.getLogger("smc.requests")
UPLOAD_DEADLINE_S = 120.0
GIL_SWITCH_INTERVAL_S = 0.0005
_REF = "#/components/schemas/{}"


def _query(name: str, description: str, **schema) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


SIGNAL_PARAMETERS = [
    _query("symbol", "Only this symbol."), _query("timeframe", "Only this timeframe, e.g. `1m`."),
    _query("label", "Only this label.", enum=["long", "short", "skip"]),
    _query("model_version", "Only signals of this model version, e.g. `smc-lora/3`."),
    _query("since", "Bar times at or after this (ISO 8601 with offset).", format="date-time"),
    _query("until", "Bar times before this (ISO 8601 with offset).", format="date-time"),
    _query("limit", "Signals per page (default 100).", type="integer", minimum=1, maximum=signal_history.MAX_PAGE),
    _query("cursor", "`next_cursor` of the previous page.")]
ANALYTICS_PARAMETERS = [
    _query("model_version", "Only this model version."),
    _query("since", "First trading day (default: 30 calendar days before `until`).", format="date"),
    _query("until", "Last trading day (default: today, UTC).", format="date")]


class Metrics:
    """Prometheus metrics through bentoml.metrics, exported by BentoML's own /metrics.

    Names follow Prometheus conventions: base units in the name (``_seconds``, ``_ratio``),
    ``_total`` for counters, and the model version as a label on what a model answered."""

    def __init__(self):
        buckets = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
        self.requests = bentoml.metrics.Counter(name="smc_requests_total", documentation="Requests by endpoint and status",
                                                labelnames=["endpoint", "status"])
        self.latency = bentoml.metrics.Histogram(name="smc_request_duration_seconds",
                                                 documentation="Time from receiving a request to its answer, by "
                                                               "endpoint and status",
                                                 labelnames=["endpoint", "status"], buckets=buckets)
        self.labels = bentoml.metrics.Counter(name="smc_predictions_total",
                                              documentation="Answers by label and model version",
                                              labelnames=["label", "version"])
        self.confidence = bentoml.metrics.Histogram(name="smc_prediction_confidence_ratio",
                                                    documentation="Top-class probability of each answer, by model "
                                                                  "version",
                                                    labelnames=["version"],
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
        self.halted = bentoml.metrics.Gauge(name="smc_trading_halted",
                                            documentation="1 while trading is halted for the scope (a symbol, or "
                                                          "'all'): every answer for it is skip",
                                            labelnames=["scope"], multiprocess_mode="livemax")
        self._versions: set[str] = set()
        self._halted: set[str] = set()

    def prediction(self, body: dict, mismatches: dict) -> None:
        version = body["model_version"]
        self.labels.labels(label=body["label"], version=version).inc()
        self.confidence.labels(version=version).observe(body["confidence"])
        for feature, count in mismatches.items():
            self.mismatches.labels(feature=feature).inc(count)

    def rows_lost(self, count: int) -> None:
        self.lost.inc(count)

    def bar_conflicts(self, count: int) -> None:
        self.conflicts.inc(count)

    def model(self, versions: list[str], reloaded) -> None:
        """The versions served now (one per model line): 1 for each, 0 for those no longer served."""
        if reloaded is not None:
            self.reloads.labels(result="ok" if reloaded else "refused").inc()
        current = set(versions)
        for gone in self._versions - current:
            self.info.labels(version=gone).set(0)
        for version in current - self._versions:
            self.info.labels(version=version).set(1)
        self._versions = current

    def halts(self, state) -> None:
        """The kill switch's state (``smc_core.safety.HaltState``): 1 per halted scope, 0 once lifted."""
        scopes = {"all" if scope == "*" else scope for scope in state.halts}
        self.halted.labels(scope="all").set(1 if "all" in scopes else 0)
        for scope in scopes | self._halted:
            self.halted.labels(scope=scope).set(1 if scope in scopes else 0)
        self._halted = scopes

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint, status=str(status)).observe(seconds)


class RequestLog:
    """The per-request JSON lines on stdout, one object per line and nothing around it.

    Why its own handler: BentoML configures logging before the service starts (root at
    WARNING with its trace format), so ``logging.basicConfig`` does nothing and INFO lines
    of ``smc.*`` were dropped. The line is written by a listener thread, never on the event
    loop. ``LOG_LEVEL`` above INFO turns the lines off."""

    def __init__(self, level: str):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        json_log.handlers[:] = [logging.handlers.QueueHandler(self._queue)]
        json_log.propagate = False
        logging.getLogger("smc").setLevel(level)  # the service's other lines go through BentoML's handler
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()


# WORKERS and TLS (SSL_CERTFILE, SSL_KEYFILE) become BentoML's own options: each worker process
# runs one SmcPredictor; the rate limit (REDIS_URL), spools and metrics are made for several.
# ACCESS_LOG and TRACING are off unless asked for (the JSON request log carries the same facts).
@bentoml.service(name="smc_predictor", traffic={"timeout": 30}, **SERVER.bentoml_config())
@bentoml.asgi_app(app, path="/")
class SmcPredictor:
    """Loads the champion (or MODEL_PATH), follows the registry alias, serves the mounted app."""

    def __init__(self) -> None:
        self.request_log = RequestLog(os.environ.get("LOG_LEVEL", "INFO").upper())
        if bentoml.server_context.bento_version in (None, "not available"):
            # served from source: BentoML's metrics label service_version is the project's version
            # (a built Bento keeps its own tag's version)
            bentoml.server_context.bento_version = PROJECT.version
        if os.environ.get("MODEL_TAG") and not os.environ.get("MODEL_PATH"):
            # a built Bento serves the package packed with it (its label model_tag; bento_artifact's metadata)
            os.environ["MODEL_PATH"] = bentoml.models.get(os.environ["MODEL_TAG"]).path_of("package")
        settings = ServiceSettings.from_env()
        self.runtime = Runtime(settings, metrics=Metrics(), worker=bentoml.server_context.worker_index).start()
        # Predictions run on one compute thread, the requests waiting for it as one micro-batch
        # (smc_core/serving/batcher.py): a second compute thread only contends for the cores.
        self.compute = MicroBatcher(self.runtime.predict_many, settings.micro_batch_size,
                                    settings.micro_batch_wait_ms / 1000)
        # Uploads wait for the database and reloads load a model: neither may hold up the compute thread.
        self.uploads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload")
        self._documents: dict = {}
        # What start-up allocated (torch, pandas, the model) lives as long as the process: out of
        # the collector's sight, so a full collection never walks it in the middle of a request
        gc.collect()
        gc.freeze()
        # The event loop and the compute thread share the GIL. Each time the compute thread lets go of
        # it (a numpy or ONNX Runtime call), the loop may hold it for a whole switch interval before
        # the compute thread gets it back, and an answer set by the compute thread waits as long for
        # the loop: 5 ms by default, longer than a request's work. 0.5 ms bounds both waits.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    def __is_ready__(self) -> bool:
        """/readyz: ready only once a verified, warmed-up model is in the slot."""
        return self.runtime.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.compute.stop()
        self.runtime.stop()
        self.request_log.stop()

    # --- the contract ------------------------------------------------------------------

    @app.post("/predict", operation_id="predict", tags=["predict"],
              summary="Long, short or skip for the bar that just closed",
              responses={200: {"model": PredictAnswer, "description": "The answer, with the risk block to trade."},
                         **responses(400, 401, 413, 422, 429, 500, 503, 504, e422=PREDICT_422)},
              openapi_extra=request_body({"$ref": _REF.format("PredictRequest")}, EXAMPLE))
    async def predict(self, request: Request) -> Response:
        """Features are computed from the request's bars by the training code; client-sent
        indicators are compared and counted, never used. `label` is `skip` below the entry
        threshold (probabilities are still returned); `position_size` is the tier."""
        return await self._respond(request, "predict", False,
                                   lambda payload, started: self.compute.submit((payload, started)))

    @app.post("/predict_batch", operation_id="predict_batch", tags=["predict"],
              summary="Several /predict requests in one call",
              responses={200: {"model": BatchAnswer, "description": "One answer or one error per item, in order."},
                         **responses(400, 401, 413, 422, 429, 500, 504,
                                     e422="The body is not `{\"requests\": [...]}`; each item's own refusals are "
                                          "answered in `results` (with `index`).")},
              openapi_extra=request_body({"type": "object", "required": ["requests"], "properties": {
                  "requests": {"type": "array", "items": {
                      "description": "A /predict request (PredictRequest). Each item is checked on its own: a "
                                     "refused item (anything but a servable request) is an error in `results`, "
                                     "with its `index`, and the others are answered."}}}},
                  {"requests": [EXAMPLE]}))
    async def predict_batch(self, request: Request) -> Response:
        """Each item is answered like `POST /predict` (the same checks, one forward pass for all),
        within one time budget."""
        runtime = self.runtime

        def work(payload, started):
            if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
                raise RequestError(422, "request validation failed", {"errors": [
                    {"path": "requests", "message": "a list of /predict requests is required"}]})
            items = payload["requests"]
            if len(items) > runtime.settings.max_batch_size:
                raise RequestError(413, "batch too large", {"max_batch_size": runtime.settings.max_batch_size,
                                                            "received": len(items)})
            now = time.perf_counter()
            results = [{**error_body(outcome), "index": index} if isinstance(outcome, RequestError) else outcome
                       for index, outcome in enumerate(runtime.predict_many([(item, now) for item in items]))]
            return {"results": results, "processing_time_ms": (time.perf_counter() - started) * 1000}

        return await self._respond(request, "predict_batch", False,
                                   lambda payload, started: self.compute.call(lambda: work(payload, started)))

    @app.post("/bars", operation_id="upload_bars", tags=["bars"],
              summary="Store bars of one series (a strategy's history at start-up)",
              responses={200: {"model": BarsAnswer, "description": "What was stored."},
                         **responses(400, 401, 413, 422, 429, 500, 503, 504,
                                     e422="Bars refused like a file ingest (`details.errors[]` names `bars[i]` and "
                                          "why); nothing of the upload is stored.",
                                     e503="The database is unavailable; nothing was stored: send the bars again.")},
              openapi_extra=request_body({"$ref": _REF.format("BarsUpload")},
                                         {"symbol": "ES", "timeframe": "1m", "bars": EXAMPLE["context_bars"][:3]}))
    async def upload_bars(self, request: Request) -> Response:
        """Validated like a file ingest, stored in one transaction, idempotent, never written
        over a stored bar (a differing bar is kept in `bar_revisions` and counted)."""
        return await self._respond(request, "bars", False,
                                   lambda payload, started: self.runtime.upload_bars(payload), upload=True)

    @app.get("/model", operation_id="model_info", tags=["operations"],
             summary="What is served and what a request needs",
             responses={200: {"model": ModelInfo, "description": "The served model."},
                        **responses(401, 413, 429, 500, 503, 504)},
             openapi_extra={"security": [{"ApiKey": []}]})
    async def model_info(self, request: Request) -> Response:
        return await self._respond(request, "model", False,
                                   lambda payload, started: self.compute.call(self.runtime.model_info),
                                   needs_body=False)

    @app.get("/health", operation_id="health", tags=["operations"],
             summary="Status, served version, storage (no key)",
             responses={200: {"model": Health, "description": "Always 200; /readyz is the readiness probe."}})
    async def health(self) -> Response:
        return Response(dump_json(self.runtime.health()), media_type="application/json")

    @app.post("/admin/reload", operation_id="admin_reload", tags=["operations"],
              summary="Load the configured model again, then swap",
              responses={200: {"model": ReloadAnswer, "description": "Reloaded and swapped in."},
                         **responses(401, 409, 413, 429, 500, 504,
                                     e504=ERRORS[504] + " The reload goes on; /health shows its outcome.")},
              openapi_extra={"security": [{"AdminKey": []}]})
    async def admin_reload(self, request: Request) -> Response:
        """MODEL_PATH again, or the registry alias's current version: loaded, verified and warmed
        up before one swap; requests in flight finish on the model they started with."""
        return await self._respond(request, "admin_reload", True,
                                   lambda payload, started: self.uploads.submit(self.runtime.reload),
                                   needs_body=False)

    # --- the kill switch (README "Safety") ----------------------------------------------

    @app.post("/admin/halt", operation_id="admin_halt", tags=["operations"],
              summary="Stop trading: every answer for the symbols (or all) is skip",
              responses={200: {"model": HaltAnswer, "description": "In force now, and in the database unless "
                                                                   "`persisted` is false (written when it answers)."},
                         **responses(400, 401, 413, 422, 429, 500, 504)},
              openapi_extra=request_body({"$ref": _REF.format("HaltRequest")}, key="AdminKey"))
    async def admin_halt(self, request: Request) -> JSONResponse:
        """Persisted in `trading_halts` (every service following the database halts within
        HALT_POLL_SECONDS) and in a local file; survives restarts and database outages."""
        # the upload threads: a database write must never hold up the compute thread
        return await self._respond(request, "admin_halt", True,
                                   lambda payload, started: self.runtime.admin_halt(payload), upload=True)

    @app.post("/admin/resume", operation_id="admin_resume", tags=["operations"],
              summary="Trade again: lift the halts of the symbols (or every halt)",
              responses={200: {"model": HaltAnswer, "description": "The halts still in force."},
                         **responses(400, 401, 413, 422, 429, 500, 503, 504,
                                     e503="The database is unavailable: a resume needs it, the halts stay.")},
              openapi_extra=request_body({"$ref": _REF.format("HaltRequest")}, key="AdminKey"))
    async def admin_resume(self, request: Request) -> JSONResponse:
        return await self._respond(request, "admin_resume", True,
                                   lambda payload, started: self.runtime.admin_resume(payload), upload=True)

    # --- signals (DESIGN §11) ----------------------------------------------------------

    @app.get("/signals", operation_id="list_signals", tags=["signals"], summary="Served signals, newest first",
             responses={200: {"model": SignalPage, "description": "One page; `next_cursor` for the next."},
                        **responses(401, 422, 429, 503, 504, e503="The database is unavailable.")},
             openapi_extra={"parameters": SIGNAL_PARAMETERS, "security": [{"ApiKey": []}]})
    async def list_signals(self, request: Request) -> JSONResponse:
        """Filters: symbol, timeframe, label, model_version, `since` ≤ bar time < `until`; `limit` per page."""
        params = dict(request.query_params)

        def work(payload, started):
            query = signal_history.SignalQuery.from_params(params)
            return self.runtime.read(lambda conn: signal_history.list_signals(conn, query))

        return await self._respond(request, "signals", False,
                                   work, needs_body=False, upload=True)

    @app.get("/signals/analytics", operation_id="signal_analytics", tags=["signals"],
             summary="Signals, trade rate, hit rate and realised return per model version and trading day",
             responses={200: {"model": SignalAnalytics, "description": "From the outcomes of the signals."},
                        **responses(401, 422, 429, 503, 504, e503="The database is unavailable.")},
             openapi_extra={"parameters": ANALYTICS_PARAMETERS, "security": [{"ApiKey": []}]})
    async def signal_analytics(self, request: Request) -> JSONResponse:
        """Trading days `since`..`until` (default: the last 30 calendar days); optional model_version."""
        params = dict(request.query_params)
        return await self._respond(request, "signal_analytics", False, lambda payload, started: self.runtime.read(
            lambda conn: signal_history.analytics(conn, params)), needs_body=False, upload=True)

    @app.get("/signals/{request_id}", operation_id="get_signal", tags=["signals"],
             summary="One signal, with its outcome once known",
             responses={200: {"model": SignalDetail, "description": "`outcome` is null until its label is known."},
                        **responses(401, 404, 429, 503, 504, e503="The database is unavailable.")},
             openapi_extra={"security": [{"ApiKey": []}]})
    async def get_signal(self, request: Request, request_id: str) -> JSONResponse:
        return await self._respond(request, "signal", False, lambda payload, started: self.runtime.read(
            lambda conn: signal_history.get_signal(conn, request_id)), needs_body=False, upload=True)

    @app.websocket("/signals/stream")
    async def signal_stream(self, websocket: WebSocket) -> None:
        """Every signal as it is served, one JSON text message each (the `Signal` schema), in order.
        Key: `X-API-Key` header or `api_key` query parameter; filters `symbol`, `timeframe` (comma lists).
        A client that stops reading while SIGNALS_WS_BUFFER signals wait is closed (1008, with the reason)."""
        await websocket.accept()
        try:
            self.runtime.authorize(websocket.headers.get("x-api-key") or websocket.query_params.get("api_key"))
        except RequestError as error:
            await websocket.close(code=4401 if error.status == 401 else 4429, reason=error.error)
            return

        async def client_gone() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass

        await serve_client(self.runtime.signals.feed, parse_filter(websocket.query_params.get("symbol")),
                           parse_filter(websocket.query_params.get("timeframe")), websocket.send_text, client_gone,
                           lambda code, reason: websocket.close(code=code, reason=reason),
                           websocket.scope.get("server"), websocket.scope.get("client"))

    # --- documentation -----------------------------------------------------------------

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> JSONResponse:
        """The document as served now: it names the served model's timeframe, symbols and bars."""
        model = None
        try:
            info = self.runtime.model_info()
            keys = ("model_version", "timeframe", "horizon", "symbols", "required_bars")
            model = {key: info[key] for key in keys}
            model["lines"] = [{key: line[key] for key in keys} for line in info["lines"]]
        except RequestError:
            pass
        key = None if model is None else tuple(line["model_version"] for line in model["lines"])
        if key not in self._documents:
            settings = self.runtime.settings
            self._documents = {key: document(app, PROJECT, settings, model, settings.max_batch_size,
                                             settings.upload_max_bars)}
        return JSONResponse(self._documents[key])

    @app.get("/docs", include_in_schema=False)
    async def docs(self):
        return swagger_page(PROJECT)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(self):
        return redoc_page(PROJECT)

    @app.get("/", include_in_schema=False)
    async def index(self):
        return RedirectResponse("/docs")

    # --- one request -------------------------------------------------------------------

    async def _respond(self, request: Request, endpoint: str, admin: bool, submit, needs_body: bool = True,
                       upload: bool = False) -> Response:
        """Auth, body limit, JSON, the work under TIMEOUT_MS, one error shape, a metric and a JSON log line.

        ``submit(payload, started)`` starts the work on a thread and returns its concurrent future.
        ``upload``: database work (bulk bars, halts, the signal history), with its own size limit and deadline:
        ``submit`` is then the work itself, run here on the upload threads (never on the event loop)."""
        started = time.perf_counter()
        runtime = self.runtime
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
            future = asyncio.wrap_future(self.uploads.submit(submit, payload, started) if upload
                                         else submit(payload, started))
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
        if json_log.isEnabledFor(logging.INFO):
            json_log.info(dump_json({"ts": time.time(), "endpoint": endpoint, "status": status,
                                     "request_id": body.get("request_id"), "label": body.get("label"),
                                     "confidence": body.get("confidence"),
                                     "model_version": body.get("model_version"),
                                     "latency_ms": round(seconds * 1000, 3),
                                     "error_type": body.get("error") if status != 200 else None}).decode())
        return Response(dump_json(body), status_code=status, media_type="application/json")
