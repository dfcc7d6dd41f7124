"""The model stage: ``base_model`` (self-supervised pretraining, refreshed rarely) and
``lora_model`` (a LoRA adapter on it, calibrated, compared with baselines, packaged,
tracked in MLflow and registered with the alias ``challenger``).

All learning happens in ``smc_core.model.pipeline``; these assets add storage, progress
in the Dagster log, MLflow tracking through dagster-mlflow, and metadata for the UI.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from dagster import (AssetExecutionContext, AssetKey, AssetsDefinition, Config, Failure, MaterializeResult,
                     MetadataValue, asset)
from pydantic import Field

from smc_assets.common import checked, image_markdown, inline_chart, number_or_reason, trigger_of
from smc_assets.features import features
from smc_assets.labels import HorizonConfig, labels
from smc_core.dataset import TrainingData, load_training_data
from smc_core.evaluation.importance import FeatureImportance, importance_chart, importance_markdown
from smc_core.evaluation.metrics import comparison_markdown
from smc_core.features import CATALOGUE
from smc_core.lines import MAIN_LINE, ModelLine
from smc_core.model import BackboneConfig, TrainConfig, reliability_diagram, save_package
from smc_core.model.calibration import expected_calibration_error, reliability_points
from smc_core.model.backbone import check_checkpoint
from smc_core.model.package import PACKAGE_FORMAT, load_base, save_base
from smc_core.model.pipeline import BaseConfig, PretrainedBase, RunConfig, pretrain_base, train_lora_run
from smc_core.provenance import code_revision
from smc_core.registry import PACKAGE_ARTIFACT, alias_version, log_pyfunc_model, register_package, run_dicts
from smc_core.monitoring import window_start
from smc_core.store import feature_symbols


class TrainingConfig(Config):
    """Knobs shared by pretraining and fine-tuning."""

    symbols: list[str] = Field(default_factory=list, description="Symbols to train on; empty means all with features.")
    start: Optional[str] = Field(default=None, description="Earliest decision time (ISO date/time, UTC); empty: all.")
    end: Optional[str] = Field(default=None, description="Latest decision time (ISO date/time, UTC); empty: all.")
    recent_days: Optional[int] = Field(
        default=None, description="Only the newest N trading days of stored bars (a sliding window; retrains set "
                                  "it). Empty: start/end decide.")
    sequence_length: int = Field(default=20, description="Bars per window (one token each).")
    epochs: int = Field(default=30, description="Maximum epochs; early stopping on validation loss ends sooner.")
    patience: int = Field(default=3, description="Epochs without a lower validation loss before stopping.")
    batch_size: int = 256
    learning_rate: float = 2e-3
    seed: int = Field(default=0, description="Seeds every random choice: same data and seed, same weights.")
    threads: int = Field(default=TrainConfig.threads, description="Threads for torch and LightGBM in "
                         "this run (1 is fastest on a busy 2-core box; the same value gives the same weights).")

    def train_config(self, **extra) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, patience=self.patience, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, seed=self.seed, threads=self.threads, **extra)

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        start = _utc(self.start, "start") if self.start else pd.Timestamp("1970-01-01", tz="UTC")
        end = _utc(self.end, "end") if self.end else pd.Timestamp.now(tz="UTC")
        if start >= end:
            raise Failure(description=f"start {start} is not before end {end}")
        return start, end


class BaseModelConfig(TrainingConfig):
    checkpoint: Optional[str] = Field(
        default=None, description="Local Qwen2 checkpoint directory (e.g. a downloaded Qwen2.5-0.5B); "
                                  "empty: the small default backbone below, pretrained here.")
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    epochs: int = Field(default=5, description="Pretraining epochs (0 with a checkpoint: use its weights as they are).")
    patience: int = 2
    holdout_fraction: float = Field(
        default=0.2, description="Newest share of windows never pretrained on, so fine-tuning validation stays unseen.")
    max_windows: int = Field(default=200_000, description="Cap on pretraining windows (an even subsample).")

    def base_config(self) -> BaseConfig:
        backbone = BackboneConfig(hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
                                  num_kv_heads=self.num_kv_heads, intermediate_size=self.intermediate_size)
        return BaseConfig(backbone=backbone, checkpoint=self.checkpoint, sequence_length=self.sequence_length,
                          holdout_fraction=self.holdout_fraction, max_windows=self.max_windows,
                          train=self.train_config())


class LoraModelConfig(TrainingConfig):
    horizon: HorizonConfig = Field(default_factory=HorizonConfig, description="Which stored labels to learn.")
    valid_fraction: float = Field(default=0.2, description="Newest share of labelled windows used for validation.")
    embargo_minutes: int = Field(default=60, description="Training samples this soon after validation are dropped.")
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    threshold: float = Field(default=0.55, description="Confidence at which a long/short call counts as a trade.")
    baselines: bool = Field(default=True, description="Also train LightGBM and the from-scratch transformer.")
    scratch_baseline: bool = Field(default=True, description="Include the from-scratch transformer among the baselines "
                                                             "(the slowest one: it trains as long as LoRA does).")
    train_stride: int = Field(default=1, description="Train on every k-th window (neighbours share all but one bar; "
                                                     "2-3 costs little signal and divides the training time).")
    importance_windows: int = Field(default=RunConfig.importance_windows,
                                    description="Validation windows (evenly spaced) the permutation importance is "
                                                "measured on; 0: not measured.")
    importance_repeats: int = Field(default=RunConfig.importance_repeats,
                                    description="Shuffles per feature in the permutation importance.")

    def run_config(self) -> RunConfig:
        return RunConfig(sequence_length=self.sequence_length, valid_fraction=self.valid_fraction,
                         train_stride=self.train_stride, importance_windows=self.importance_windows,
                         importance_repeats=self.importance_repeats,
                         embargo=pd.Timedelta(minutes=self.embargo_minutes), threshold=self.threshold,
                         baselines=(("scratch",) if self.scratch_baseline else ()) + ("lightgbm",) if self.baselines
                         else (),
                         train=self.train_config(lora_r=self.lora_r, lora_alpha=self.lora_alpha,
                                                 lora_dropout=self.lora_dropout))


def model_assets(line: ModelLine = MAIN_LINE) -> tuple[AssetsDefinition, AssetsDefinition]:
    """``base_model`` and ``lora_model`` of one model line (``smc_core.lines``): the line's timeframe,
    horizon and registered model; an added line's keys carry its prefix."""
    timeframe_of = _timeframe_of(line)

    @asset(
        key=[*line.key_prefix, "base_model"],
        deps=[features],
        required_resource_keys={"database", "landing", "model_store", "mlflow"},
        group_name="model",
        kinds={"pytorch", "mlflow"},
        description="Qwen2 backbone pretrained on next-bar return buckets of all stored bars (or a local checkpoint).",
    )
    def base_model(context: AssetExecutionContext, config: BaseModelConfig) -> MaterializeResult:
        if config.checkpoint:
            checked(lambda: check_checkpoint(Path(config.checkpoint)))  # before any data is read
        data = _load(context, config, line, horizon=None)
        mlflow = context.resources.mlflow
        mlflow.set_tags({"stage": "base_model", "mlflow.runName":
                         f"base {timeframe_of(context)} · {trigger_of(context)}"})
        mlflow.log_params({"base_" + k: v for k, v in config.model_dump().items()})
        context.log.info(f"pretraining on {len(data)} windows of {', '.join(data.symbols)}")
        base = checked(lambda: pretrain_base(data, CATALOGUE, config.base_config(), progress=_progress(context)))
        path = context.resources.model_store.directory("base", context.run.run_id)
        save_base(path, base.state, base.spec, base.backbone_config,
                  {**base.info, "dagster_run_id": context.run.run_id, "mlflow_run_id": mlflow.active_run().info.run_id})
        mlflow.log_artifact(str(path / "base.json"), "base_model")
        return MaterializeResult(metadata={
            "path": MetadataValue.path(str(path)),
            "trained_until": base.info["trained_until"],
            "windows_train": base.info["windows_train"],
            "windows_valid": base.info["windows_valid"],
            "best_valid_loss": base.info["best_valid_loss"],
            "backbone": MetadataValue.json(vars(base.backbone_config)),
            "checkpoint": config.checkpoint or "none (default backbone)",
            "history": MetadataValue.md(_history_markdown({"pretrain": base.info["history"]})),
            "mlflow_run_id": mlflow.active_run().info.run_id,
        })

    @asset(
        key=[*line.key_prefix, "lora_model"],
        deps=[base_model, features, labels],
        required_resource_keys={"database", "landing", "model_store", "mlflow"},
        group_name="model",
        kinds={"pytorch", "mlflow"},
        description="LoRA adapter on the base, calibrated, scored beside LightGBM and a from-scratch transformer, "
                    "packaged and registered in MLflow with the alias 'challenger'.",
    )
    def lora_model(context: AssetExecutionContext, config: LoraModelConfig) -> MaterializeResult:
        base = _latest_base(context, line)
        horizon = checked(lambda: line.horizon(config.horizon.horizon())).name
        data = _load(context, config, line, horizon=horizon)
        mlflow = context.resources.mlflow
        run_id = mlflow.active_run().info.run_id
        mlflow.set_tags({"stage": "lora_model", "horizon": horizon, "base_model": base.info["path"]})
        mlflow.log_params({k: v for k, v in config.model_dump().items() if k != "horizon"} | {"horizon": horizon})
        context.log.info(f"fine-tuning on {len(data)} labelled windows of {', '.join(data.symbols)} ({horizon})")
        run = checked(lambda: train_lora_run(data, base, CATALOGUE, config.run_config(),
                                              progress=_progress(context, mlflow)))
        for model_name, report in run.reports.items():
            mlflow.log_metrics({f"{model_name}_{k}": v for k, v in report.items() if v == v})
        calibration = run.calibration
        mlflow.log_metrics({"temperature": calibration.temperature, "ece_before": calibration.ece_raw,
                            "ece_after": calibration.ece, "nll_before": calibration.nll_raw,
                            "nll_after": calibration.nll})

        importance = _log_importance(mlflow, run, line.name)

        artifact_uri = f"{mlflow.get_artifact_uri()}/{PACKAGE_ARTIFACT}"
        version = register_package(run_id, artifact_uri, name=line.name, alias=None,
                                   tags={"dagster_run_id": context.run.run_id})
        try:
            lineage = _lineage(context, config, data, run.facts, base, horizon, run_id, version, line)
            path = context.resources.model_store.directory("packages", f"{line.name}-v{version}")
            save_package(path, run.model, run.spec, run.backbone_config, calibration.temperature, lineage,
                         run.reference, reference_probabilities=calibration.probs)
            mlflow.log_artifacts(str(path), PACKAGE_ARTIFACT)
            model_uri = log_pyfunc_model(path)  # the same package, loadable by mlflow.pyfunc / `mlflow models`
            with tempfile.TemporaryDirectory() as scratch:
                diagrams = [reliability_diagram(probs, run.valid_y, Path(scratch) / f"reliability_{name}.png", title)
                            for name, probs, title in (("before", calibration.raw, "before calibration"),
                                                       ("after", calibration.probs, "after calibration"))]
                for diagram in diagrams:
                    mlflow.log_artifact(str(diagram), "calibration")
                images = image_markdown(*diagrams)
                if run.importance is not None:
                    chart = importance_chart(run.importance, Path(scratch) / "permutation.png",
                                             f"{line.name} v{version}: permutation importance (top 20)")
                    mlflow.log_artifact(str(chart), IMPORTANCE_ARTIFACT)
                    importance["feature_importance_chart"] = MetadataValue.md(image_markdown(chart))
            mlflow.tracking_client.set_registered_model_alias(line.name, "challenger", version)
            mlflow.set_tag("mlflow.runName", f"lora {timeframe_of(context)} {horizon.split('_')[0]} · "
                                             f"{trigger_of(context)} · v{version}")
        except BaseException:
            mlflow.tracking_client.delete_model_version(line.name, version)  # never leave a version without files
            shutil.rmtree(context.resources.model_store.directory("packages", f"{line.name}-v{version}"),
                          ignore_errors=True)
            raise
        context.log.info(f"registered {line.name}/{version} as challenger; package at {path}")

        lora = run.reports["lora"]
        no_trades = "undefined: no validation window reached the trade threshold"
        return MaterializeResult(metadata={
            "model_version": f"{line.name}/{version}",
            "mlflow_run_id": run_id,
            "mlflow_model": model_uri,
            "package_path": MetadataValue.path(str(path)),
            "comparison": MetadataValue.md(comparison_markdown(run.reports)),
            "log_loss": lora["log_loss"],
            "macro_f1": lora["macro_f1"],
            "trade_precision": number_or_reason(lora["trade_precision"], no_trades),
            "trade_edge": number_or_reason(lora["trade_edge"], no_trades),
            "temperature": calibration.temperature,
            "ece_before": calibration.ece_raw,
            "ece_after": calibration.ece,
            "nll_before": calibration.nll_raw,
            "nll_after": calibration.nll,
            "reliability": MetadataValue.md(_reliability_inline(calibration, run.valid_y)),
            "reliability_chart": MetadataValue.md(images),
            "history": MetadataValue.md(_history_markdown(run.histories)),
            "split": MetadataValue.json(run.facts),
            **importance,
            "best_epoch": run.result.best_epoch,
            "trainable_parameters": run.result.n_trainable,
            "windows_per_second": run.result.windows_per_second,
        })

    return base_model, lora_model



# --- helpers -----------------------------------------------------------------------------

IMPORTANCE_ARTIFACT = "feature_importance"
"""The run's artifact folder of importances: ``permutation.json`` (the LoRA model, on validation
windows), ``lightgbm_gain.json`` (the baseline) and the chart."""


def _log_importance(mlflow, run, name: str) -> dict:
    """Log the run's importances to MLflow (JSON artifacts, one ``importance.<feature>`` metric each,
    so runs compare in MLflow's UI) and describe them beside the champion's: the metadata entries."""
    measured = [(f"{IMPORTANCE_ARTIFACT}/{kind}.json", importance, key) for kind, importance, key in (
        ("permutation", run.importance, "feature_importance"),
        ("lightgbm_gain", run.lightgbm_importance, "lightgbm_gain")) if importance is not None]
    champion = alias_version("champion", name=name)
    label = f"the champion (v{champion})" if champion else "the champion"
    previous_ones = (run_dicts(champion, *(path for path, _, _ in measured), name=name) if champion
                     else [None] * len(measured))
    metadata = {}
    for (path, importance, key), previous in zip(measured, previous_ones):
        mlflow.log_dict(importance.as_dict(), path)
        metadata[key] = MetadataValue.md(importance_markdown(
            importance, None if previous is None else FeatureImportance.from_dict(previous), label))
    if run.importance is not None:
        mlflow.log_metrics({f"importance.{name}": value for name, value, _ in run.importance.ranked()})
    return metadata


def _timeframe_of(line: ModelLine):
    """The line's timeframe in a run: an added line's own, the data's on the main line."""
    return lambda context: line.timeframe or context.resources.landing.timeframe


def _load(context: AssetExecutionContext, config: TrainingConfig, line: ModelLine,
          horizon: Optional[str]) -> TrainingData:
    db = context.resources.database.database()
    timeframe = _timeframe_of(line)(context)
    symbols = config.symbols or feature_symbols(db, timeframe, CATALOGUE)
    if not symbols:
        raise Failure(description=f"no stored features of feature set {CATALOGUE.version} for {timeframe}: "
                                  "materialize the features partitions first")
    start, end = config.time_range()
    if config.recent_days is not None:
        if config.recent_days < 2:
            raise Failure(description=f"recent_days must be at least 2, got {config.recent_days}")
        # trading days are those of the stored bars, the data's timeframe, whichever the line's
        window = window_start(db, context.resources.landing.timeframe, config.recent_days,
                              context.resources.landing.calendar(symbols[0]))
        if window is not None and window > start:
            start = window
            context.log.info(f"training window: the newest {config.recent_days} trading days, from {start}")
    return checked(lambda: load_training_data(db, symbols, timeframe, start, end, CATALOGUE, horizon,
                                               config.sequence_length))


def _latest_base(context: AssetExecutionContext, line: ModelLine) -> PretrainedBase:
    key = AssetKey([*line.key_prefix, "base_model"])
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise Failure(description=f"no {key.to_user_string()} has been materialized yet: materialize it first")
    path = Path(event.asset_materialization.metadata["path"].value)
    stored = checked(lambda: load_base(path))
    context.log.info(f"base model {path} (pretrained until {stored.info['trained_until']})")
    return PretrainedBase(stored.state, stored.spec, stored.backbone_config, {**stored.info, "path": str(path)})


def _progress(context: AssetExecutionContext, mlflow=None):
    def report(event: dict) -> None:
        stage = event["stage"]
        if "epoch" not in event:
            context.log.info(event.get("message", f"{stage}: training"))
            return
        valid = event["valid_loss"]
        context.log.info(f"{stage} epoch {event['epoch']}: train loss {event['train_loss']:.4f}, "
                         f"valid loss {valid:.4f} ({event['seconds']:.1f} s)")
        if mlflow is not None:
            mlflow.log_metrics({f"{stage}_train_loss": event["train_loss"], f"{stage}_valid_loss": valid},
                               step=event["epoch"])
    return report


def _lineage(context, config: LoraModelConfig, data: TrainingData, facts: dict, base: PretrainedBase, horizon: str,
             mlflow_run_id: str, version: str, line: ModelLine) -> dict:
    ends, codes = pd.DatetimeIndex(data.row_ts[data.ends]), data.row_symbol[data.ends]
    partitions = sorted({f"{day}|{data.symbols[code]}" for code in np.unique(codes)
                         for day in context.resources.landing.calendar(data.symbols[code]).trading_day_of(
                             ends[codes == code])})
    return {
        "registered_model": line.name, "model_version": version, "mlflow_run_id": mlflow_run_id,
        "dagster_run_id": context.run.run_id, "asset": "lora_model", "package_format": PACKAGE_FORMAT,
        "data": {"symbols": data.symbols, "timeframe": _timeframe_of(line)(context), "horizon": horizon,
                 "feature_set_version": CATALOGUE.version, "partitions": partitions, **facts},
        "base": {key: base.info.get(key) for key in ("path", "trained_until", "dagster_run_id", "mlflow_run_id",
                                                      "checkpoint")},
        "config": config.model_dump(),
        "code": code_revision(),
    }


def _reliability_inline(calibration, y) -> str:
    """Accuracy against confidence before (grey) and after (blue) calibration, shown inline."""
    lines = [(*reliability_points(probs, y), colour) for probs, colour in ((calibration.raw, "#999"),
                                                                           (calibration.probs, "#1f77b4"))]
    caption = (f"Reliability on {len(y):,} validation windows (accuracy against confidence; dashed: perfect): before "
               f"calibration (grey) ECE {expected_calibration_error(calibration.raw, y):.4f}, after (blue) ECE "
               f"{expected_calibration_error(calibration.probs, y):.4f} (full diagrams: reliability_chart)")
    return inline_chart(caption, lines, square=True)


def _history_markdown(histories: dict[str, list[dict]]) -> str:
    lines = ["| stage | epoch | train loss | valid loss | seconds |", "|---|---|---|---|---|"]
    for stage, history in histories.items():
        for epoch in history:
            lines.append(f"| {stage} | {epoch['epoch']} | {epoch['train_loss']:.4f} | {epoch['valid_loss']:.4f} | "
                         f"{epoch['seconds']:.1f} |")
    return "\n".join(lines)


def _utc(text: str, name: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise Failure(description=f"{name} {text!r} is not an ISO date or time") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


base_model, lora_model = model_assets(MAIN_LINE)
