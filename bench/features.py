"""Feature throughput: the project's full feature set against the ``smartmoneyconcepts``
package's fvg + swing_highs_lows + bos_choch + ob, on the same synthetic bars.

The project computes all catalogue columns (SMC structure, technical, time) on ``--bars``
bars; the peer runs its four functions on the first ``--smc-bars`` of them (it is much
slower, so a smaller N keeps the run short). Rates are bars per second; both sides are
timed after a warm-up call (numba compilation excluded for both), median of ``--repeat``.

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smc_core.features import CATALOGUE, compute_features  # noqa: E402
from smc_core.synthetic import SyntheticConfig, generate_bars  # noqa: E402

BARS_PER_DAY = 1380


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars for the project (default 1,000,000)")
    parser.add_argument("--smc-bars", type=int, default=100_000, help="bars for smartmoneyconcepts (default 100,000)")
    parser.add_argument("--swing-length", type=int, default=10, help="smartmoneyconcepts swing_length")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    log(f"generating {args.bars:,} synthetic bars")
    bars = generate_bars(SyntheticConfig(days=math.ceil(args.bars / BARS_PER_DAY), seed=3)).iloc[: args.bars]
    bars = bars.reset_index(drop=True)

    compute_features(bars.iloc[:1000])  # numba warm-up
    project_seconds = best_of(lambda: compute_features(bars), args.repeat)
    project_rate = len(bars) / project_seconds
    log(f"project: {len(CATALOGUE.names)} features on {len(bars):,} bars in {project_seconds:.2f}s "
        f"= {project_rate:,.0f} bars/s")
    import numba  # the SMC kernel threads long series; also report one thread, like the peer

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    single_rate = len(bars) / best_of(lambda: compute_features(bars), args.repeat)
    numba.set_num_threads(threads)
    log(f"project, one thread: {single_rate:,.0f} bars/s")

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner on import
        from smartmoneyconcepts import smc
    ohlc = bars.iloc[: args.smc_bars][["open", "high", "low", "close", "volume"]].reset_index(drop=True)

    def peer(frame):
        swings = smc.swing_highs_lows(frame, swing_length=args.swing_length)
        smc.fvg(frame)
        smc.bos_choch(frame, swings)
        smc.ob(frame, swings)

    peer(ohlc.iloc[:2000])  # numba warm-up inside the package
    smc_seconds = best_of(lambda: peer(ohlc), args.repeat)
    smc_rate = len(ohlc) / smc_seconds
    log(f"smartmoneyconcepts: fvg+swings+bos_choch+ob on {len(ohlc):,} bars in {smc_seconds:.2f}s "
        f"= {smc_rate:,.0f} bars/s")

    print(json.dumps({
        "bars": len(bars),
        "project_bars_per_s": round(project_rate),
        "smc_bars": len(ohlc),
        "smc_bars_per_s": round(smc_rate),
        "ratio": round(project_rate / smc_rate, 2),
        "project_1thread_bars_per_s": round(single_rate),
        "ratio_1thread": round(single_rate / smc_rate, 2),
        "project_features": len(CATALOGUE.names),
        "repeat": args.repeat,
    }))


if __name__ == "__main__":
    main()
