"""The benchmark's peer: a plain FastAPI app serving the same package with the same
preprocessing (smc_core.serving), no auth, limits, metrics or log. Run by bench/serve.py:
``uvicorn bench.serve_peer:app``, MODEL_PATH set."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import FastAPI, Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from smc_core.policy import PolicyConfig  # noqa: E402
from smc_core.serving.engine import load_model, predict  # noqa: E402
from smc_core.serving.request import RequestError, check_against_model, parse_request, too_few_bars  # noqa: E402

model = load_model(Path(os.environ["MODEL_PATH"]), "peer", threads=1)
app = FastAPI()


@app.post("/predict")
def predict_route(payload: dict) -> JSONResponse:
    started = time.perf_counter()
    try:
        request = parse_request(payload)
        columns = request.columns()
        terms = model.terms
        check_against_model(request, columns["ts"].asi8, terms.timeframe, terms.width_ns, terms.symbols)
        if len(columns["ts"]) < model.required_bars:
            raise too_few_bars(len(columns["ts"]), 0, model.required_bars)
    except RequestError as error:
        return JSONResponse({"error": error.error, "code": error.status, "details": error.details}, error.status)
    return JSONResponse(predict(request, model, PolicyConfig(), started, columns=columns).body)


@app.get("/health")
def health() -> dict:
    return {"ok": True}
