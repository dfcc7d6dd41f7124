"""/predict throughput and latency with one BentoML worker against N workers (WORKERS), same
package, same requests, same run: what the WORKERS default rests on.

Load comes from ``wrk`` (C, one thread, so the load generator takes little of the cores it
measures), keep-alive connections at each concurrency for --duration seconds; bar capture and
the prediction log off, rate limit out of the way. Progress on stderr; last line: one JSON object
with each run's figures and ``rps_ratio_c<n>`` = N workers' requests/s over one worker's.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import KEY, bench_package, free_port, log, start  # noqa: E402
from smc_core.serving.replay import request_payload  # noqa: E402
from smc_core.synthetic import SyntheticConfig, generate_bars  # noqa: E402

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, script: Path, concurrency: int, duration: float) -> dict:
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script),
                           url + "/predict"], capture_output=True, text=True, check=True)
    out = done.stdout
    figures = {f"p{q}_ms": _milliseconds(re.search(rf"^\s+{q}%\s+(\S+)", out, re.M).group(1)) for q in (50, 99)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {**figures, "rps": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
            "errors": (int(errors.group(1)) if errors else 0) + (sum(map(int, sockets.groups())) if sockets else 0)}


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--workers", type=int, default=2, help="the worker count compared with one")
    parser.add_argument("--model", type=Path, help="a model package (default: train a small one)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    levels = [int(x) for x in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        model = bench_package(args.model, scratch)
        bars = generate_bars(SyntheticConfig(days=2, edge="smc", seed=9))
        body = json.dumps(request_payload(bars.iloc[252:301], "ES", "1m"))
        script = Path(scratch) / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f'wrk.headers["X-API-Key"] = "{KEY}"\nwrk.body = {json.dumps(body)}\n')
        command = [str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:SmcPredictor",
                   "--host", "127.0.0.1"]
        results = {}
        for workers in (1, args.workers):
            port = free_port()
            env = {"API_KEY": KEY, "ADMIN_API_KEY": KEY + "-admin", "TIMEOUT_MS": "5000", "WORKERS": str(workers),
                   "RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000", "LOG_PREDICTIONS": "false",
                   "CAPTURE_BARS": "false", "MODEL_PATH": str(model), "SMC_HOME": f"{scratch}/home{workers}",
                   "BENTOML_HOME": f"{scratch}/bentoml{workers}", "LOG_LEVEL": "WARNING"}
            process, seconds = start(command + ["--port", str(port)], env, f"http://127.0.0.1:{port}", "/readyz")
            log(f"{workers} worker(s) ready in {seconds:.1f} s")
            try:
                wrk(f"http://127.0.0.1:{port}", script, 4, 2.0)  # warm-up: every worker's first requests
                results[f"workers_{workers}"] = {}
                for level in levels:
                    figures = wrk(f"http://127.0.0.1:{port}", script, level, args.duration)
                    results[f"workers_{workers}"][f"c{level}"] = figures
                    log(f"{workers} worker(s) c{level}: {figures}")
            finally:
                process.terminate()
                process.wait(timeout=30)

    one, many = results["workers_1"], results[f"workers_{args.workers}"]
    print(json.dumps({**results, **{f"rps_ratio_c{level}": many[f"c{level}"]["rps"] / one[f"c{level}"]["rps"]
                                    for level in levels}}))


if __name__ == "__main__":
    main()
