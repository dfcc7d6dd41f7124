"""Model speed: LoRA fine-tuning throughput and calibrated inference latency on CPU.

Synthetic bars (planted edge) → features → labels → windows of the default sequence
length; a short self-supervised pretraining, then LoRA fine-tuning of the default
backbone; the merged package is saved, loaded by the Predictor (1 thread, as served) and
timed on a single window and on batches of 32.

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smc_core.calendar import CME_EQUITY  # noqa: E402
from smc_core.features import CATALOGUE, compute_features  # noqa: E402
from smc_core.labels import Horizon, triple_barrier  # noqa: E402
from smc_core.model import (BackboneConfig, Predictor, TrainConfig, encode, finetune_lora, fit_encoder,  # noqa: E402
                            next_bar_targets, pretrain, save_package, windows)
from smc_core.synthetic import SyntheticConfig, generate_bars  # noqa: E402

SEQUENCE = 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10, help="synthetic trading days (1380 bars each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=500, help="timed single-window predictions")
    args = parser.parse_args()

    bars = generate_bars(SyntheticConfig(days=args.days, edge="smc", edge_strength=0.7, seed=2))
    features = compute_features(bars)
    labelled = bars.assign(atr=features["atr"].to_numpy(), session=CME_EQUITY.trading_day_of(bars["ts"]).astype("int64"))
    labels = triple_barrier(labelled, Horizon(), last_session_complete=True)["label"].to_numpy()
    warm_up = CATALOGUE.max_lookback - 1
    rows, labels = features.to_numpy()[warm_up:], labels[warm_up:].astype(np.int64)
    split = int(len(rows) * 0.8)
    ends = np.arange(SEQUENCE - 1, len(rows))
    ends = ends[labels[ends] >= 0]
    train_ends, valid_ends = ends[ends < split - Horizon().bars], ends[ends >= split + SEQUENCE]
    spec = fit_encoder(rows[:split], CATALOGUE, SEQUENCE)
    numeric, categorical = encode(rows, spec)

    def split_of(selected):
        return (*windows(numeric, categorical, selected, SEQUENCE), labels[selected])

    log(f"{len(train_ends):,} training and {len(valid_ends):,} validation windows")
    pretrain_ends = train_ends[train_ends + 1 < split]
    targets, _ = next_bar_targets(rows, CATALOGUE, pretrain_ends)
    base = pretrain(BackboneConfig(), *windows(numeric, categorical, pretrain_ends, SEQUENCE), targets, spec=spec,
                    config=TrainConfig(epochs=1))
    result = finetune_lora(base, spec, split_of(train_ends), split_of(valid_ends),
                           TrainConfig(epochs=args.epochs, patience=args.epochs),
                           progress=lambda e: log(f"epoch {e['epoch']}: train {e['train_loss']:.4f} "
                                                  f"valid {e['valid_loss']:.4f} ({e['seconds']:.1f}s)"))

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "package"
        save_package(path, result.model, spec, BackboneConfig(), 1.0, {"bench": True}, rows[:200])
        predictor = Predictor.load(path, threads=1)
        one = windows(numeric, categorical, valid_ends[:1], SEQUENCE)
        batch = windows(numeric, categorical, valid_ends[:32], SEQUENCE)
        for _ in range(20):
            predictor.predict_proba(*one)
        single = []
        for _ in range(args.iterations):
            started = time.perf_counter()
            predictor.predict_proba(*one)
            single.append(time.perf_counter() - started)
        batched = []
        for _ in range(max(args.iterations // 5, 20)):
            started = time.perf_counter()
            predictor.predict_proba(*batch)
            batched.append(time.perf_counter() - started)

    log(f"single window p50 {percentile(single, 50):.2f} ms, p99 {percentile(single, 99):.2f} ms; "
        f"batch of 32 p50 {statistics.median(batched) * 1000:.2f} ms")
    print(json.dumps({
        "train_windows_per_s": round(result.windows_per_second, 1),
        "forward_p50_ms": round(percentile(single, 50), 3),
        "forward_p99_ms": round(percentile(single, 99), 3),
        "batch32_p50_ms": round(statistics.median(batched) * 1000, 3),
        "train_windows": int(len(train_ends)),
        "epochs_run": len(result.history),
        "threads": 1,
    }))


if __name__ == "__main__":
    main()
