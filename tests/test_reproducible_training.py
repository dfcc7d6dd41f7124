"""Training is reproducible across processes: the same stored data and config give the same bytes.

Two separate Python processes read the same features and labels from PostgreSQL, pretrain a
base, fine-tune LoRA, calibrate and fit the LightGBM baseline. They differ on purpose in
everything that must not matter: Python's string-hash seed (set and dict order), the thread
count the process runs with, and how much it drew from torch's global RNG before training.
Their weights must be equal bit for bit, and their temperature and metrics exactly.

Run as a script (``python tests/test_reproducible_training.py URL OUT DRAWS THREADS``) this
file is the worker each process runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEFRAME = "1m"
SYMBOLS = ("NQ", "ES")  # stored in this order; training must not care
DAYS = 3
BASE_EPOCHS = 2
LORA_EPOCHS = 2
WEIGHT_FILES = ("base/body.safetensors", "package/model.safetensors", "package/base.safetensors",
                "package/adapter/adapter_model.safetensors", "package/reference.safetensors")


def _horizon():
    from smc_core.labels import Horizon
    return Horizon(bars=30, up_atr=1.5, down_atr=1.5)


def store_market(database) -> None:
    """Features and labels of two synthetic symbols with a planted edge, written as the assets do."""
    from smc_core.calendar import CME_EQUITY
    from smc_core.features import CATALOGUE, compute_features
    from smc_core.labels import triple_barrier
    from smc_core.store import write_features, write_labels
    from smc_core.synthetic import SyntheticConfig, generate_bars

    for seed, symbol in enumerate(SYMBOLS, start=3):
        bars = generate_bars(SyntheticConfig(days=DAYS, edge="smc", edge_strength=0.9, seed=seed))
        features = compute_features(bars)
        features.index = pd.DatetimeIndex(bars["ts"], name="ts")
        traded = bars.assign(atr=features["atr"].to_numpy(),
                             session=CME_EQUITY.trading_day_of(bars["ts"]).astype("int64")).reset_index(drop=True)
        labels = pd.concat([bars[["ts"]].reset_index(drop=True),
                            triple_barrier(traded, _horizon(), last_session_complete=True)], axis=1)
        start, end = bars["ts"].min() - pd.Timedelta(minutes=1), bars["ts"].max()
        write_features(database, symbol, TIMEFRAME, features, CATALOGUE, start, end)
        write_labels(database, symbol, TIMEFRAME, _horizon().name, labels, start, end)


def train_once(url: str, out: Path, rng_draws: int, threads: int) -> None:
    """The worker: perturb the process, then train from the database exactly as the assets do."""
    import torch

    torch.set_num_threads(threads)
    initial_seed = torch.initial_seed()
    torch.rand(rng_draws)  # whatever ran before in this process drew from the global RNG

    from smc_core.dataset import load_training_data
    from smc_core.db import Database
    from smc_core.features import CATALOGUE
    from smc_core.model import TrainConfig
    from smc_core.model.package import save_base, save_package
    from smc_core.model.pipeline import BaseConfig, RunConfig, pretrain_base, train_lora_run
    from smc_core.store import feature_symbols

    db = Database(url)
    symbols = feature_symbols(db, TIMEFRAME, CATALOGUE)
    span = (pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC"))
    unlabelled = load_training_data(db, symbols, TIMEFRAME, *span, CATALOGUE, None, 20)
    labelled = load_training_data(db, symbols, TIMEFRAME, *span, CATALOGUE, _horizon().name, 20)
    db.close()
    base = pretrain_base(unlabelled, CATALOGUE, BaseConfig(train=TrainConfig(epochs=BASE_EPOCHS, patience=2)))
    save_base(out / "base", base.state, base.spec, base.backbone_config, {})
    run = train_lora_run(labelled, base, CATALOGUE,
                         RunConfig(baselines=("lightgbm",), train=TrainConfig(epochs=LORA_EPOCHS, patience=2)))
    save_package(out / "package", run.model, run.spec, run.backbone_config, run.calibration.temperature,
                 {"model_version": "repro"}, run.reference, reference_probabilities=run.calibration.probs)
    losses = {stage: [(e["train_loss"], e["valid_loss"]) for e in history] for stage, history in run.histories.items()}
    (out / "result.json").write_text(json.dumps({
        "temperature": run.calibration.temperature, "lightgbm_temperature": run.lightgbm.calibration.temperature,
        "reports": run.reports, "losses": losses, "base_losses": [e["valid_loss"] for e in base.info["history"]],
        "encoder": run.spec.to_json(),
        # evidence that the two processes really differed where they had to
        "hash_of_symbol": hash(symbols[0]), "threads_before": threads, "initial_seed": initial_seed,
    }, sort_keys=True))


def _launch(url: str, out: Path, hash_seed: str, rng_draws: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, url, str(out), str(rng_draws), str(threads)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def two_runs(database, tmp_path_factory):
    store_market(database)
    started = time.perf_counter()
    outs = [tmp_path_factory.mktemp(f"run{k}") for k in (1, 2)]
    processes = [_launch(database.url, outs[0], "1", 0, 1), _launch(database.url, outs[1], "2", 12345, 2)]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    print(f"two training processes: {time.perf_counter() - started:.1f} s")
    return outs


def test_two_processes_train_bit_identical_weights(two_runs):
    first, second = two_runs
    a, b = (json.loads((out / "result.json").read_text()) for out in two_runs)
    # the processes differed: string hashes, thread count, RNG seed and draws before training
    assert a["hash_of_symbol"] != b["hash_of_symbol"] and a["initial_seed"] != b["initial_seed"]
    assert a["threads_before"] != b["threads_before"]
    differing = [name for name in WEIGHT_FILES if (first / name).read_bytes() != (second / name).read_bytes()]
    assert not differing, f"weights differ between the two processes: {differing}"
    assert (first / "package/calibration.json").read_text() == (second / "package/calibration.json").read_text()
    for key in ("temperature", "lightgbm_temperature", "reports", "losses", "base_losses", "encoder"):
        assert a[key] == b[key], key


def test_the_seed_decides_the_initial_weights_and_nothing_drawn_before_does():
    import numpy as np
    import torch

    from smc_core.features import CATALOGUE
    from smc_core.model import BarClassifier, TrainConfig, fit_encoder
    from smc_core.model.train import training_context

    spec = fit_encoder(np.zeros((4, len(CATALOGUE.names))), CATALOGUE, 20)

    def initial_weights(seed: int) -> dict:
        with training_context(TrainConfig(seed=seed, threads=1)):
            return BarClassifier.for_spec(spec).state_dict()

    first = initial_weights(0)
    torch.rand(999)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    again, other = initial_weights(0), initial_weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["bar_projection.weight"], other["bar_projection.weight"])
    # the caller's RNG stream and thread count are left as they were
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads


if __name__ == "__main__":
    url, out, draws, threads = sys.argv[1:]
    train_once(url, Path(out), int(draws), int(threads))
