"""bench/serve.py's in-process stage profile against the current service code: it calls the
runtime's own functions one by one, so a change of their signatures must break a test, not the
next benchmark run (it did once: validate grew the routed model and arm)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from serving_setup import bars, request_for

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_stage_profile_runs_on_the_service_code(package):
    bench = load_bench()
    market = bars(days=2, seed=9)
    bodies = [json.dumps(request_for(market, end)).encode() for end in range(600, 610)]
    profiled = bench.profile(package, bodies, repeats=5)
    assert set(profiled["stages_p50_ms"]) == set(bench.STAGES)
    assert all(value >= 0 for value in profiled["stages_p50_ms"].values())
    assert profiled["in_process_p50_ms"] > 0 and profiled["backend"] in ("torch", "onnxruntime")


def test_rounds_are_summarised_by_their_medians_and_every_round_is_kept():
    bench = load_bench()
    rounds = [{"c8": {"p50_ms": p50, "p99_ms": p99, "rps": rps, "errors": errors, "cpu_ms_per_request": 1.0}}
              for p50, p99, rps, errors in ((10, 20, 600, 0), (12, 30, 500, 1), (11, 22, 580, 0))]
    combined = bench.over_rounds(rounds)["c8"]
    assert (combined["p50_ms"], combined["p99_ms"], combined["rps"], combined["errors"]) == (11, 22, 580, 1)
    assert combined["rounds"] == [r["c8"] for r in rounds]
    assert bench.over_rounds(rounds[:1]) == rounds[0]  # one round: its own figures
