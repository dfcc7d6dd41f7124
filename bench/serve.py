"""/predict under load, measured with wrk: the service against the bare-HTTP floor and a FastAPI
peer, on the same realistic 49-bar requests, at 1, 8 and 32 connections.

Why wrk: a native load generator needs a fraction of a core, so on this 2-core host the
client does not compete with the Python servers it measures (an asyncio client saturated
near 1,400 requests/s and measured itself as much as the server). ``bench/serve.lua``
cycles through the request bodies and reports p50/p99, requests and errors (non-2xx and
socket errors) as one JSON line.

Servers, one after the other, each with as many workers as the service (WORKERS):
- ``floor``: a bare ASGI app that parses the body and answers a fixed body, on the same
  uvicorn (bench/serve_floor.py): what HTTP and parsing alone cost on this host;
- ``fastapi``: a plain FastAPI app serving the same model with the same preprocessing
  (bench/serve_peer.py);
- ``service``: the BentoML service as deployed (keys, limits, metrics, request log), bar
  capture and the prediction log off, as the peer has none;
- ``service_capture``: the same with both on (DATABASE_URL, else an embedded PostgreSQL):
  ``capture_p99_ratio_c8`` (target ≤ 1.1);
- ``service_publish``: the service publishing every signal to a Redis Stream (a redis-server of
  its own on a free port): ``publish_p99_ratio_c8`` (target ≤ 1.1).

Before the servers, the service's own code path is timed in this process, stage by stage
over the same requests (parse, validation, features, encoding, forward, policy,
serialisation), in CPU time of the thread, so that a shared host's other work does not count;
``framework`` is the service's c1 p50 minus their sum: what HTTP, BentoML and the hand-off to
the compute thread add. Each run also reports the server's CPU per request (its process
tree, from /proc), which is what bounds throughput on a dedicated host whatever else runs. Progress on stderr; last line of stdout: one
JSON object, with one ratio per target of issue 15 and ``targets_met``.

``--rounds N`` runs the servers N times interleaved (service, service_capture, service, ...) and
reports the median of each figure: on a shared 2-core host one 10 s run's c8 p99 moves by about
10 % from run to run, as much as the 1.1 ratios are judged on; every round's figures are kept.

Install wrk: ``apt-get install wrk`` (Debian/Ubuntu) or ``brew install wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smc_core.model.pipeline import train_small_package  # noqa: E402
from smc_core.serving.engine import answer, load_model, prepare  # noqa: E402
from smc_core.serving.replay import request_payload  # noqa: E402
from smc_core.jsonable import dump_json  # noqa: E402
from smc_core.serving.runtime import Runtime, ServiceSettings, parse_json  # noqa: E402
from smc_core.synthetic import SyntheticConfig, generate_bars  # noqa: E402

KEY = "bench-key"
START_TIMEOUT_S = 600  # a loaded host can take minutes; cold_start_s reports what it took
LUA = Path(__file__).with_name("serve.lua")
TARGETS = {"c8_p99_ms": 15.0, "c32_p99_ms": 50.0, "c8_rps_of_floor": 0.1, "c1_p99_over_p50": 3.0,
           "c1_p50_over_model_work": 2.0, "cold_start_s": 10.0}
STAGES = ("parse", "validation", "features", "encoding", "forward", "policy", "serialisation")
MODEL_WORK = ("parse", "validation", "features", "encoding", "forward")
"""The model's own work: the request read into bars, the features, the model's input and its forward pass."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], env: dict, url: str, ready_path: str) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while time.perf_counter() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited with {process.returncode}")
        try:
            if httpx.get(url + ready_path, timeout=1).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{command} not ready in {START_TIMEOUT_S:g} s")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its descendants so far."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            todo += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, bodies: Path, connections: int, seconds: float, key: str | None, server: int) -> dict:
    """One wrk run (one thread: it needs far less than a core) → p50/p99 ms, requests/s, errors,
    and the server's CPU ms per request."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency", "-s", str(LUA),
               url, "--", str(bodies)] + ([key] if key else [])
    before = cpu_seconds(server)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(server) - before
    summary = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    return {"p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
            "rps": summary["requests"] / summary["duration_s"], "errors": summary["errors"],
            "cpu_ms_per_request": used * 1000 / max(summary["requests"], 1)}


def profile(model_path: Path, bodies: list[bytes], repeats: int) -> dict:
    """p50 ms of each stage of the service's code path (smc_core.serving.runtime.Runtime.predict_many
    and the service's JSON encoding), over ``repeats`` requests, timed around each call."""
    settings = ServiceSettings.from_env({"SMC_DEV_MODE": "1", "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false",
                                         "SMC_HOME": tempfile.gettempdir()})
    runtime = Runtime(settings)
    model = load_model(model_path, "bench", threads=settings.torch_threads, backend=settings.inference_backend)
    runtime.slot.swap(model)
    policy, length = runtime.policy(model), model.predictor.spec.sequence_length
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "in_process")}
    for i in range(repeats + 20):
        raw = bodies[i % len(bodies)]
        clock = time.thread_time  # CPU of this thread: the model runs on it (one intra-op thread)
        t0 = clock()
        payload = parse_json(raw, settings.max_body_bytes)
        t1 = clock()
        request, columns, from_store, model, _ = runtime.validate(payload, model)
        t2 = clock()
        prepared = prepare(request, columns, length, from_store)
        t3 = clock()
        numeric, categorical = model.predictor.encode_windows([prepared.window])
        t4 = clock()
        probabilities = model.predictor.predict_proba(numeric, categorical)[0]
        t5 = clock()
        body = answer(prepared, model, policy, probabilities, time.perf_counter()).body
        t6 = clock()
        dump_json(body)
        t7 = clock()
        dump_json(runtime.predict_many([(parse_json(raw, settings.max_body_bytes), time.perf_counter())])[0])
        t8 = clock()
        if i >= 20:  # the first calls warm caches
            for stage, took in zip((*STAGES, "in_process"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5,
                                                            t7 - t6, t8 - t7)):
                samples[stage].append(took * 1000)
    stages = {stage: float(np.median(values)) for stage, values in samples.items()}
    return {"stages_p50_ms": {stage: stages[stage] for stage in STAGES}, "in_process_p50_ms": stages["in_process"],
            "model_work_p50_ms": float(np.median(np.sum([samples[s] for s in MODEL_WORK], axis=0))),
            "backend": model.inference.backend, "backend_reason": model.inference.reason}


def bench_package(model: Path | None, scratch: str) -> Path:
    """``--model``, else a small package trained on synthetic bars into ``scratch``."""
    if model is None:
        log("training a small package on synthetic bars ...")
        model = Path(scratch) / "model"
        train_small_package(model, {"ES": generate_bars(SyntheticConfig(days=3, edge="smc", seed=5))})
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--model", type=Path, help="a model package (default: train a small one)")
    parser.add_argument("--profile-requests", type=int, default=500)
    parser.add_argument("--servers", default="floor,fastapi,service,service_capture,service_publish")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the servers this many times, interleaved (A, B, A, B, ...); each figure is then "
                             "the median over the rounds, every round's kept under 'rounds'")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`")
    levels = [int(x) for x in args.levels.split(",")]
    wanted = args.servers.split(",")
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as scratch:
        model = bench_package(args.model, scratch)
        bars = generate_bars(SyntheticConfig(days=2, edge="smc", seed=9))
        payloads = [request_payload(bars.iloc[end - 48: end + 1], "ES", "1m") for end in range(100, 1300, 7)]
        raw = [json.dumps(p, separators=(",", ":")).encode() for p in payloads]
        bodies = Path(scratch) / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(raw) + b"\n")

        profiled = profile(model, raw, args.profile_requests)
        log(f"in-process stages (p50 ms, {profiled['backend']}): "
            + ", ".join(f"{k} {v:.3f}" for k, v in profiled["stages_p50_ms"].items()))

        workers = os.environ.get("WORKERS", "1")
        uvicorn = [str(Path(sys.executable).parent / "uvicorn"), "--host", "127.0.0.1", "--log-level", "warning",
                   "--no-access-log", "--workers", workers]
        bentoml = [str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:SmcPredictor",
                   "--host", "127.0.0.1"]
        service_env = {"API_KEY": KEY, "ADMIN_API_KEY": KEY + "-admin", "TIMEOUT_MS": "5000",
                       "WORKERS": "1",  # one process, as the peer (bench/serve_workers.py compares worker counts)
                       "RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000",
                       "BENTOML_HOME": str(Path(scratch) / "bentoml")}
        redis_port = free_port()
        redis_server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", scratch], stdout=subprocess.DEVNULL)
        servers = {
            "floor": (uvicorn + ["bench.serve_floor:app"], {}, "/", None),
            "fastapi": (uvicorn + ["bench.serve_peer:app"], {}, "/health", None),
            "service": (bentoml, {**service_env, "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false"}, "/readyz", KEY),
            "service_capture": (bentoml, {**service_env, "LOG_PREDICTIONS": "true", "CAPTURE_BARS": "true",
                                          "DATABASE_URL": ""},  # an embedded database in the scratch home
                                "/readyz", KEY),
            "service_publish": (bentoml, {**service_env, "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false",
                                          "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}, "/readyz", KEY),
        }
        runs: dict[str, list[dict]] = {name: [] for name in wanted}
        cold_start = None
        try:
            for round_ in range(args.rounds):
                for name in wanted:
                    command, env, ready, key = servers[name]
                    port = free_port()
                    url = f"http://127.0.0.1:{port}"
                    process, seconds = start(command + ["--port", str(port)],
                                             {**env, "MODEL_PATH": str(model), "SMC_HOME": scratch}, url,
                                             ready if name != "floor" else "/")
                    if name == "service" and cold_start is None:
                        cold_start = seconds
                    log(f"{name} ready in {seconds:.1f} s" + (f" (round {round_ + 1})" if args.rounds > 1 else ""))
                    try:
                        wrk(url, bodies, 4, 2.0, key, process.pid)  # warm-up
                        measured = {}
                        for level in levels:
                            measured[f"c{level}"] = wrk(url, bodies, level, args.duration, key, process.pid)
                            log(f"{name} c{level}: {measured[f'c{level}']}")
                        runs[name].append(measured)
                    finally:
                        process.terminate()
                        process.wait(timeout=30)
        finally:  # the publisher's Redis goes with the run
            redis_server.terminate()
            redis_server.wait(timeout=20)

    results = {name: over_rounds(measured) for name, measured in runs.items()}
    print(json.dumps(summarise(results, profiled, cold_start, load_before, os.getloadavg(), workers)))


def over_rounds(measured: list[dict]) -> dict:
    """One server's figures per level: a single round's, or the median of each figure over the
    rounds (errors summed), with every round's figures under ``rounds``."""
    if len(measured) == 1:
        return measured[0]
    combined = {}
    for level in measured[0]:
        each = [m[level] for m in measured]
        combined[level] = {key: (sum(r[key] for r in each) if key == "errors" else float(np.median([r[key] for r in each])))
                           for key in each[0]}
        combined[level]["rounds"] = each
    return combined


def summarise(results: dict, profiled: dict, cold_start: float | None, load_before, load_after, workers: str) -> dict:
    service = results.get("service", {})
    stages = dict(profiled["stages_p50_ms"])
    if "c1" in service:
        stages["framework"] = service["c1"]["p50_ms"] - sum(stages.values())
        stages["framework_cpu"] = service["c1"]["cpu_ms_per_request"] - profiled["in_process_p50_ms"]
    out = {**results, "where_time_goes_c1_p50_ms": stages, "in_process_p50_ms": profiled["in_process_p50_ms"],
           "model_work_p50_ms": profiled["model_work_p50_ms"], "forward_p50_ms": stages["forward"],
           "backend": profiled["backend"], "cold_start_s": cold_start, "workers": int(workers),
           "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)]}

    def ratio(top: float, bottom: float) -> float:
        return top / bottom if bottom else float("inf")

    for name in ("capture", "publish"):  # each needs only c8 of both servers (--servers service,service_capture)
        if "c8" in service and "c8" in results.get(f"service_{name}", {}):
            out[f"{name}_p99_ratio_c8"] = ratio(results[f"service_{name}"]["c8"]["p99_ms"], service["c8"]["p99_ms"])
    if {"c1", "c8"} <= service.keys():
        out["overhead_ratio"] = ratio(service["c1"]["p50_ms"], stages["forward"])
        out["c1_p99_over_p50"] = ratio(service["c1"]["p99_ms"], service["c1"]["p50_ms"])
        out["c1_p50_over_model_work"] = ratio(service["c1"]["p50_ms"], profiled["model_work_p50_ms"])
        out["c8_p99_ms_over_target"] = ratio(service["c8"]["p99_ms"], TARGETS["c8_p99_ms"])
        if "c32" in service:
            out["c32_p99_ms_over_target"] = ratio(service["c32"]["p99_ms"], TARGETS["c32_p99_ms"])
        if "fastapi" in results:
            out["p99_ratio_c8"] = ratio(service["c8"]["p99_ms"], results["fastapi"]["c8"]["p99_ms"])
        if "floor" in results:
            out["c8_rps_of_floor"] = ratio(service["c8"]["rps"], results["floor"]["c8"]["rps"])
        out["service_errors"] = sum(level["errors"] for level in service.values())
        if cold_start is not None:
            out["cold_start_over_target"] = cold_start / TARGETS["cold_start_s"]
        met = {"c8_p99_ms": out["c8_p99_ms_over_target"] <= 1, "c1_p99_over_p50": out["c1_p99_over_p50"] <= 3,
               "c1_p50_over_model_work": out["c1_p50_over_model_work"] <= 2, "errors": out["service_errors"] == 0}
        if "c32_p99_ms_over_target" in out:
            met["c32_p99_ms"] = out["c32_p99_ms_over_target"] <= 1
        if "c8_rps_of_floor" in out:
            met["c8_rps_of_floor"] = out["c8_rps_of_floor"] >= TARGETS["c8_rps_of_floor"]
        if cold_start is not None:
            met["cold_start_s"] = cold_start <= TARGETS["cold_start_s"]
        out["targets_met"] = met
    return out


if __name__ == "__main__":
    main()
