"""bench/serve.py's in-process stage profile against the current service code: it calls the
runtime's own functions one by one, so a change of their signatures must break a test, not the
next benchmark run (it did once: validate grew the routed model and arm)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from serving_setup import bars, request_for

ROOT = Path(__file__).resolve().parents[1]


def test_the_stage_profile_runs_on_the_service_code(package):
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    market = bars(days=2, seed=9)
    bodies = [json.dumps(request_for(market, end)).encode() for end in range(600, 610)]
    profiled = bench.profile(package, bodies, repeats=5)
    assert set(profiled["stages_p50_ms"]) == set(bench.STAGES)
    assert all(value >= 0 for value in profiled["stages_p50_ms"].values())
    assert profiled["in_process_p50_ms"] > 0 and profiled["backend"] in ("torch", "onnxruntime")
