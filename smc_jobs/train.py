"""``smc train``: a base pretrained and a LoRA adapter fine-tuned on the stored features and
labels, on one process or on N with PyTorch's own launcher (torchrun), written as the model
package the service loads.

Why torchrun and not a pool of our own: it starts the N processes, gives each its rank and
the rendezvous, and is what a cluster's PyTorchJob or a GPU box already runs; the training
loop only joins the group (``smc_core.model.distributed``). Every rank reads the same rows
from PostgreSQL and runs the same code; rank 0 writes the package.

Run as a module (``python -m smc_jobs.train REQUEST.json``) this file is what each process runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from smc_core.errors import SmcError

SUMMARY = "training.json"


@dataclass(frozen=True)
class TrainRequest:
    out: str
    database_url: str
    timeframe: str = "1m"
    symbols: list[str] = field(default_factory=list)
    """Empty: every symbol with stored features."""
    horizon: str | None = None
    """Stored labels to learn (``Horizon.name``); None: the default horizon."""
    base_epochs: int = 5
    epochs: int = 30
    batch_size: int = 256
    seed: int = 0
    lora_dropout: float = 0.05
    threads: int = 1


def train_package(request: TrainRequest) -> dict:
    """Pretrain, fine-tune and calibrate on this process's share of every batch; rank 0 writes the
    package and ``training.json`` (losses, temperature, seconds, processes) into ``request.out``."""
    import pandas as pd

    from smc_core.dataset import load_training_data
    from smc_core.db import Database
    from smc_core.features import CATALOGUE
    from smc_core.labels import Horizon
    from smc_core.model import TrainConfig
    from smc_core.model.distributed import process_group
    from smc_core.model.package import save_package
    from smc_core.model.pipeline import BaseConfig, RunConfig, pretrain_base, train_lora_run
    from smc_core.store import feature_symbols

    started = time.perf_counter()
    with process_group() as world, Database(request.database_url) as db:
        horizon = request.horizon or Horizon().name
        symbols = request.symbols or feature_symbols(db, request.timeframe, CATALOGUE)
        if not symbols:
            raise SmcError(f"no stored {request.timeframe} features of feature set {CATALOGUE.version}: ingest "
                           "bars and materialize the features partitions first")
        span = (pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp.now(tz="UTC"))
        run_config = RunConfig(baselines=(), importance_windows=0, train=TrainConfig(  # measured by lora_model
            epochs=request.epochs, batch_size=request.batch_size, seed=request.seed, threads=request.threads,
            lora_dropout=request.lora_dropout))
        length = run_config.sequence_length
        unlabelled = load_training_data(db, symbols, request.timeframe, *span, CATALOGUE, None, length)
        labelled = load_training_data(db, symbols, request.timeframe, *span, CATALOGUE, horizon, length)
        base = pretrain_base(unlabelled, CATALOGUE, BaseConfig(sequence_length=length, train=TrainConfig(
            epochs=request.base_epochs, patience=2, batch_size=request.batch_size, seed=request.seed,
            threads=request.threads)))
        run = train_lora_run(labelled, base, CATALOGUE, run_config)
        summary = {
            "processes": world.size, "seconds": time.perf_counter() - started,
            "temperature": run.calibration.temperature, "best_epoch": run.result.best_epoch,
            "windows_per_second": run.result.windows_per_second, "lora": run.reports["lora"],
            "history": {"pretrain": base.info["history"], "lora": run.histories["lora"]},
            "request": {k: v for k, v in asdict(request).items() if k != "database_url"},
        }
        if world.main:
            out = Path(request.out)
            lineage = {"model_version": "local", "data": {**run.facts, "horizon": horizon, "symbols": list(symbols),
                                                          "timeframe": request.timeframe},
                       "training": {"processes": world.size, "launcher": "torchrun" if world.distributed else None}}
            save_package(out / "package", run.model, run.spec, run.backbone_config, run.calibration.temperature,
                         lineage, run.reference, reference_probabilities=run.calibration.probs)
            (out / SUMMARY).write_text(json.dumps(summary, indent=1, default=float))
    return summary


def launch(request: TrainRequest, processes: int) -> dict:
    """One process: train here. N: torchrun starts N copies of this module (gloo on CPU, NCCL on GPUs)."""
    if processes == 1:
        return train_package(request)
    with tempfile.TemporaryDirectory() as scratch:
        file = Path(scratch) / "request.json"
        file.write_text(json.dumps(asdict(request)))
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc-per-node={processes}", "-m", "smc_jobs.train", str(file)])
    if done.returncode != 0:
        raise SmcError(f"distributed training on {processes} processes failed (torchrun exit {done.returncode}); "
                       "the lines above say why")
    return json.loads((Path(request.out) / SUMMARY).read_text())


if __name__ == "__main__":
    train_package(TrainRequest(**json.loads(Path(sys.argv[1]).read_text())))
