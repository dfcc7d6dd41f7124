"""`smc train --nproc 2` (torchrun, DistributedDataParallel on gloo) computes what one process does,
and the package it writes is served.

Both runs go through the CLI on the same stored features and labels (two symbols, three days),
with LoRA dropout 0 (each rank would otherwise draw its own dropout masks: equivalent in
distribution, not in value).

The tolerance, and why it is not zero: every step of the two-process run uses the gradient of
the same loss (the class-weighted mean over the same global batch; smc_core.model.distributed
says how), but the sum behind it is split in two and added by gloo's all-reduce, so the float32
gradients differ in their last bits. For most weights that stays at a bit or two (measured: the
median over tensors of the largest difference is 1.2e-7, one float32 step at 1). AdamW makes
the worst case larger: a gradient that is zero in exact arithmetic (the key-projection bias,
to which softmax attention is invariant) is pure rounding noise, which Adam divides by its own
tiny RMS (floored by eps 1e-8), so the noise itself moves that weight by up to ~lr · noise/eps
per step: measured 5.1e-6 on k_proj.bias after 2+1 epochs. The bound is 1e-4: 20 times that
worst case, and 100 times below what a wrong distributed loss does. A DDP run whose ranks each
took their shard's own weighted mean (the obvious way, wrong because the shards' class weights
differ) moved the weights by up to 1.1e-2 from the one-process run (median 4e-3), measured on
the same data and seed. Halving every gradient (a loss not scaled by the world size) would
hardly move AdamW's weights, so the training losses are compared too (1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from test_reproducible_training import SYMBOLS, TIMEFRAME, _horizon, store_market

from smc_core.model.package import load_package

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--epochs", "2", "--base-epochs", "1", "--batch-size", "128", "--lora-dropout", "0", "--seed", "3"]
WEIGHTS, PROBABILITIES = 1e-4, 1e-4


@pytest.fixture(scope="module")
def trained(database, tmp_path_factory):
    store_market(database)
    outs = {}
    for processes in (1, 2):
        out = tmp_path_factory.mktemp(f"nproc{processes}")
        env = {**os.environ, "DATABASE_URL": database.url, "SMC_HOME": str(out / "home"), "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "smc_jobs.cli", "train", "--out", str(out), "--nproc",
                               str(processes), "--horizon", _horizon().name, *ARGS],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        print(f"smc train --nproc {processes}: {time.perf_counter() - started:.1f} s; {done.stdout.strip()}")
        outs[processes] = out
    return outs


def _summary(out: Path) -> dict:
    return json.loads((out / "training.json").read_text())


def test_two_processes_train_what_one_does(trained):
    one, two = _summary(trained[1]), _summary(trained[2])
    assert (one["processes"], two["processes"]) == (1, 2)
    single, distributed = (load_package(trained[k] / "package") for k in (1, 2))
    assert distributed.lineage["training"] == {"processes": 2, "launcher": "torchrun"}
    a, b = single.model.state_dict(), distributed.model.state_dict()
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    print(f"largest weight difference, 1 vs 2 processes: {worst:.3g}")
    assert worst <= WEIGHTS
    # the comparison is not vacuous: training moved the weights far beyond the tolerance
    adapter = load_file(trained[2] / "package" / "adapter" / "adapter_model.safetensors")
    moved = max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k)  # zero before training
    print(f"largest LoRA B entry (0 before training): {moved:.3g}")
    assert moved > 10 * WEIGHTS
    assert one["best_epoch"] == two["best_epoch"]
    for stage in ("pretrain", "lora"):
        for x, y in zip(one["history"][stage], two["history"][stage], strict=True):
            assert abs(x["train_loss"] - y["train_loss"]) <= 1e-5 and abs(x["valid_loss"] - y["valid_loss"]) <= 1e-5
    assert abs(one["temperature"] - two["temperature"]) <= 1e-4


def test_the_distributed_package_is_served_like_the_single_process_one(trained, tmp_path):
    from smc_core.serving.replay import request_payload
    from smc_core.serving.runtime import Runtime, ServiceSettings
    from smc_core.synthetic import SyntheticConfig, generate_bars

    # the stored ES bars (store_market's generator and seed for the second symbol)
    bars = generate_bars(SyntheticConfig(days=3, edge="smc", edge_strength=0.9, seed=3 + SYMBOLS.index("ES")))
    ends = np.linspace(200, len(bars) - 1, 40).astype(int)
    answers = {}
    for processes in (1, 2):
        settings = ServiceSettings.from_env({
            "SMC_DEV_MODE": "1", "MODEL_PATH": str(trained[processes] / "package"), "SMC_HOME": str(tmp_path),
            "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "off", "TIMEOUT_MS": "60000"})
        runtime = Runtime(settings).start()
        try:
            answers[processes] = [runtime.predict_payload(request_payload(bars.iloc[end - 49:end + 1], "ES",
                                                                          TIMEFRAME), time.perf_counter())
                                  for end in ends]
        finally:
            runtime.stop()
    worst = max(abs(one["probabilities"][k] - two["probabilities"][k])
                for one, two in zip(answers[1], answers[2], strict=True) for k in one["probabilities"])
    print(f"largest served probability difference, 1 vs 2 processes: {worst:.3g}")
    assert worst <= PROBABILITIES
    assert [answer["label"] for answer in answers[1]] == [answer["label"] for answer in answers[2]]
    labels = {answer["label"] for answer in answers[2]}
    assert labels & {"long", "short"}, labels  # the served package calls trades, not only skip
