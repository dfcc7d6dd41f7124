"""/predict under load: the BentoML service vs a plain FastAPI app serving the same model with
the same preprocessing, at concurrency 1, 8 and 32, with realistic 49-bar requests.

Both servers run as separate processes on this machine with one torch thread; an asyncio
load generator (httpx, keep-alive) sends closed-bar requests for --duration seconds per level.
The service runs as deployed (keys, limits, metrics) with bar capture and the prediction log
off, as the peer has none; a third run, ``service_capture``, turns both on (DATABASE_URL, else
an embedded PostgreSQL) to measure what keeping every bar and answer costs:
``capture_p99_ratio_c8`` (target ≤ 1.1). A fourth, ``service_publish``, publishes every signal to
a Redis Stream (a redis-server of its own on a free port) to measure that the same way:
``publish_p99_ratio_c8`` (target ≤ 1.1). Progress on stderr; last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from smc_core.model import Predictor  # noqa: E402
from smc_core.model.pipeline import train_small_package  # noqa: E402
from smc_core.serving.replay import request_payload  # noqa: E402
from smc_core.synthetic import SyntheticConfig, generate_bars  # noqa: E402

KEY = "bench-key"
START_TIMEOUT_S = 300.0
"""A server start may take minutes on a machine shared with other work; the cold start is reported, not bounded."""


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
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{command} not ready in {START_TIMEOUT_S:.0f} s")


async def load(url: str, payloads: list[dict], concurrency: int, duration: float, headers: dict) -> dict:
    latencies, errors = [], 0
    deadline = time.perf_counter() + duration
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", json=payloads[i % len(payloads)])
                    ok = response.status_code == 200
                except httpx.TransportError:
                    ok = False
                latencies.append((time.perf_counter() - started) * 1000)
                errors += 0 if ok else 1
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    samples = np.array(latencies)
    return {"p50_ms": float(np.percentile(samples, 50)), "p95_ms": float(np.percentile(samples, 95)),
            "p99_ms": float(np.percentile(samples, 99)), "rps": len(samples) / duration, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--model", type=Path, help="a model package (default: train a small one)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            log("training a small package on synthetic bars ...")
            model = Path(scratch) / "model"
            train_small_package(model, {"ES": generate_bars(SyntheticConfig(days=3, edge="smc", seed=5))})
        bars = generate_bars(SyntheticConfig(days=2, edge="smc", seed=9))
        payloads = [request_payload(bars.iloc[end - 48: end + 1], "ES", "1m") for end in range(100, 1300, 7)]

        predictor = Predictor.load(model, threads=1)
        rows = predictor.package.reference[:predictor.spec.sequence_length].astype(np.float64)
        from smc_core.model.encoding import encode, windows
        numeric, categorical = encode(rows, predictor.spec)
        window = windows(numeric, categorical, np.array([len(rows) - 1]), predictor.spec.sequence_length)
        for _ in range(20):
            predictor.predict_proba(*window)
        forward = []
        for _ in range(300):
            started = time.perf_counter()
            predictor.predict_proba(*window)
            forward.append((time.perf_counter() - started) * 1000)
        forward_p50 = float(np.median(forward))
        log(f"bare forward p50 {forward_p50:.2f} ms")

        results, cold_start = {}, None
        bentoml = [str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:SmcPredictor",
                   "--host", "127.0.0.1"]
        service_env = {"API_KEY": KEY, "ADMIN_API_KEY": KEY + "-admin", "TIMEOUT_MS": "5000",
                       "RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000"}
        redis_port = free_port()
        redis_server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", scratch], stdout=subprocess.DEVNULL)
        servers = {
            "service": (bentoml, {**service_env, "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false"},
                        "/readyz", {"X-API-Key": KEY}),
            "service_capture": (bentoml, {**service_env, "LOG_PREDICTIONS": "true", "CAPTURE_BARS": "true",
                                          "DATABASE_URL": ""},  # an embedded database in the scratch home
                                "/readyz", {"X-API-Key": KEY}),
            "service_publish": (bentoml, {**service_env, "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false",
                                          "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"},
                                "/readyz", {"X-API-Key": KEY}),
            "fastapi": ([str(Path(sys.executable).parent / "uvicorn"), "bench.serve_peer:app", "--host", "127.0.0.1",
                         "--log-level", "warning"], {}, "/health", {}),
        }
        try:
            for name, (command, env, ready, headers) in servers.items():
                port = free_port()
                process, seconds = start(command + ["--port", str(port)],
                                         {**env, "MODEL_PATH": str(model), "SMC_HOME": scratch},
                                         f"http://127.0.0.1:{port}", ready)
                if name == "service":
                    cold_start = seconds
                log(f"{name} ready in {seconds:.1f} s")
                try:
                    asyncio.run(load(f"http://127.0.0.1:{port}", payloads, 4, 2.0, headers))  # warm-up
                    results[name] = {}
                    for level in levels:
                        results[name][f"c{level}"] = asyncio.run(load(f"http://127.0.0.1:{port}", payloads, level,
                                                                      args.duration, headers))
                        log(f"{name} c{level}: {results[name][f'c{level}']}")
                finally:
                    process.terminate()
                    process.wait(timeout=20)
        finally:  # the publisher's Redis goes with the run
            redis_server.terminate()
            redis_server.wait(timeout=20)

    c8 = "c8" if "c8" in results["service"] else f"c{levels[0]}"
    c1 = "c1" if "c1" in results["service"] else f"c{levels[0]}"
    print(json.dumps({
        "service": results["service"], "fastapi": results["fastapi"], "service_capture": results["service_capture"],
        "forward_p50_ms": forward_p50,
        "p99_ratio_c8": results["service"][c8]["p99_ms"] / results["fastapi"][c8]["p99_ms"],
        "capture_p99_ratio_c8": results["service_capture"][c8]["p99_ms"] / results["service"][c8]["p99_ms"],
        "service_publish": results["service_publish"],
        "publish_p99_ratio_c8": results["service_publish"][c8]["p99_ms"] / results["service"][c8]["p99_ms"],
        "overhead_ratio": results["service"][c1]["p50_ms"] / forward_p50, "cold_start_s": cold_start,
    }))


if __name__ == "__main__":
    main()
