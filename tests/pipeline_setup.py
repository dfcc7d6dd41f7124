"""A trained pipeline in a fresh SMC_HOME and database, through the real Dagster jobs: the
setup the model and promotion tests share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from dagster import DagsterInstance, Definitions

from smc_assets.partitions import SYMBOLS, bar_partition_key
from smc_core.calendar import CME_EQUITY
from smc_core.settings import Settings
from smc_core.synthetic import Instrument, SyntheticConfig, generate_bars, write_synthetic
from smc_jobs.definitions import build_definitions

SYMBOL = "ES"
START = date(2024, 3, 4)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_config(asset: str, config: dict) -> dict:
    return {**QUIET, "ops": {asset: {"config": config}}}


@dataclass
class Pipeline:
    settings: Settings
    definitions: Definitions
    instance: DagsterInstance
    partitions: list
    base: object = None
    train: object = None

    def run(self, job: str, asset: str | None = None, config: dict | None = None, **kwargs):
        return self.definitions.resolve_job_def(job).execute_in_process(
            instance=self.instance, run_config=run_config(asset, config or {}) if asset else QUIET, **kwargs)


def trained_pipeline(database_url: str, home: Path, days: int, base_config: dict, lora_config: dict,
                     seed: int = 11, env: dict | None = None) -> Pipeline:
    """Synthetic exports (planted edge) → market_data_job per day → base_model_job → train_job.
    ``env``: more settings (SMC_MODEL_LINES …)."""
    settings = Settings.from_env({"DATABASE_URL": database_url, "SMC_HOME": str(home), **(env or {})})
    config = SyntheticConfig(days=days, start=START, edge="smc", edge_strength=0.9, seed=seed,
                             instrument=Instrument(symbol=SYMBOL))
    write_synthetic(config, settings.landing_dir)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SYMBOLS.name, [SYMBOL])
    pipeline = Pipeline(settings, build_definitions(settings), instance, [])
    for day in sorted({date.fromisoformat(str(d)) for d in CME_EQUITY.trading_day_of(generate_bars(config)["ts"])}):
        key = bar_partition_key(SYMBOL, day)
        result = pipeline.definitions.resolve_job_def("market_data_job").execute_in_process(
            partition_key=key, instance=instance, run_config=QUIET)
        assert result.success
        pipeline.partitions.append(key)
    pipeline.base = pipeline.run("base_model_job", "base_model", base_config)
    pipeline.train = pipeline.run("train_job", "lora_model", lora_config)
    return pipeline
