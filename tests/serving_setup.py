"""A small trained model package and /predict requests built from real bars: what the serving
tests and the service benchmark share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from smc_core.dataset import from_bars
from smc_core.features import CATALOGUE
from smc_core.labels import Horizon
from smc_core.model import TrainConfig, save_package
from smc_core.model.pipeline import BaseConfig, RunConfig, pretrain_base, train_lora_run
from smc_core.synthetic import SyntheticConfig, generate_bars


def bars(days: int = 3, seed: int = 5) -> pd.DataFrame:
    return generate_bars(SyntheticConfig(days=days, edge="smc", edge_strength=0.9, seed=seed))


def tiny_package(path: Path, days: int = 3, seed: int = 5, lineage: dict | None = None) -> Path:
    """A real LoRA package trained for one epoch on synthetic bars (seconds, not minutes)."""
    data, _ = from_bars({"ES": bars(days, seed)}, Horizon(), 20)
    base = pretrain_base(data, CATALOGUE, BaseConfig(train=TrainConfig(epochs=1)))
    run = train_lora_run(data, base, CATALOGUE, RunConfig(baselines=(), train=TrainConfig(epochs=1)))
    save_package(path, run.model, run.spec, run.backbone_config, run.calibration.temperature,
                 lineage or {"model_version": "test", "data": run.facts}, run.reference)
    return path


def request_for(frame: pd.DataFrame, end: int, count: int = 49, symbol: str = "ES") -> dict:
    """The seed-000 request for the ``count`` bars ending at row ``end`` (the last is current_bar)."""
    rows = frame.iloc[end - count + 1: end + 1]
    bars_json = [{"time_utc": ts.isoformat(), "o": o, "h": h, "l": l, "c": c, "volume": v,
                  "delta": None if not np.isfinite(d) else d}
                 for ts, o, h, l, c, v, d in zip(rows["ts"], rows["open"], rows["high"], rows["low"], rows["close"],
                                                rows["volume"], rows["delta"] if "delta" in rows else [np.nan] * len(rows))]
    return {"context_bars": bars_json[:-1], "current_bar": bars_json[-1], "features": {},
            "metadata": {"symbol": symbol, "timeframe": "1m", "session": "RTH",
                         "request_time": rows["ts"].iloc[-1].isoformat()}}
