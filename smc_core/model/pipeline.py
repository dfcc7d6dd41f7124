"""Training runs end to end, framework-free: pretrain a base, then a LoRA run with its
calibration and baselines on one split.

Why here and not in the assets: the Dagster assets, the walk-forward backtest (which
retrains per fold) and the tests all run exactly this code; the assets only add storage,
logging and MLflow around it.

Leakage rules kept here:
- the base is pretrained on the oldest ``1 - holdout_fraction`` of the windows only, and
  records ``trained_until``; a LoRA run reports how many of its validation windows the
  base has seen (``valid_seen_by_base``), which is 0 when both use the same data;
- the encoder of a LoRA run is fitted on the rows its training windows cover;
- validation is the newest ``valid_fraction`` of labelled windows, with training samples
  purged by label end time ``t1`` and embargoed (``smc_core.evaluation.splits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from smc_core.dataset import TrainingData
from smc_core.evaluation.baselines import inverse_frequency_weights, train_lightgbm
from smc_core.evaluation.importance import FeatureImportance, gain_importance, permutation_importance
from smc_core.evaluation.metrics import classification_report
from smc_core.evaluation.splits import Split, holdout_split
from smc_core.features import FeatureCatalogue
from smc_core.labels import LABELS
from smc_core.model.backbone import BackboneConfig, BarClassifier, batched_logits, check_checkpoint
from smc_core.model.calibration import (class_weight_offsets, expected_calibration_error, fit_temperature, nll,
                                        softmax)
from smc_core.model.encoding import EncoderSpec, encode, fit_encoder, windows
from smc_core.model.errors import ModelError
from smc_core.model.train import (RETURN_BUCKETS, TrainConfig, TrainResult, add_logit_offsets, check_training_data,
                                  finetune_lora, next_bar_targets, pinned_threads, pretrain,
                                  train_from_scratch, training_context)

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class BaseConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    checkpoint: str | None = None
    """A local Qwen2 checkpoint directory; then ``backbone`` is read from it."""
    sequence_length: int = 20
    holdout_fraction: float = 0.2
    """The newest share of windows never pretrained on, so fine-tuning validation stays unseen."""
    valid_fraction: float = 0.1
    """Share of the pretraining windows (newest) used for early stopping."""
    max_windows: int = 200_000
    """Cap on pretraining windows (an even subsample), so a long history stays a bounded job."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, patience=2))


@dataclass
class PretrainedBase:
    state: dict[str, torch.Tensor]
    spec: EncoderSpec
    backbone_config: BackboneConfig
    info: dict


@dataclass(frozen=True)
class RunConfig:
    sequence_length: int = 20
    valid_fraction: float = 0.2
    embargo: pd.Timedelta = pd.Timedelta(minutes=60)
    threshold: float = 0.55
    """Confidence at which a long/short call counts as a trade (trade precision)."""
    reference_rows: int = 2000
    train_stride: int = 1
    """Train on every k-th training window: neighbouring windows share all but one bar, so a
    stride of 2-3 costs little signal and halves or thirds the training time."""
    baselines: tuple[str, ...] = ("scratch", "lightgbm")
    """Baselines trained on the same split: the from-scratch transformer and/or LightGBM."""
    importance_windows: int = 512
    """Validation windows (evenly spaced) the permutation importance is measured on; 0: not measured."""
    importance_repeats: int = 2
    """Shuffles per feature; the importance is their mean rise in loss, the spread their std."""
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Calibrated:
    """A model's validation probabilities before and after calibration."""

    temperature: float
    offsets: np.ndarray
    raw: np.ndarray
    probs: np.ndarray
    ece_raw: float
    ece: float
    nll_raw: float
    nll: float
    """Validation NLL before (raw softmax) and after calibration. Temperature minimises NLL,
    not ECE, so ECE can rise slightly while NLL falls."""


@dataclass
class LightGBMBaseline:
    """The fitted booster and its calibration, to score other bars the same way."""

    booster: object
    calibration: Calibrated

    def predict_proba(self, feature_rows: np.ndarray) -> np.ndarray:
        raw = self.booster.predict(feature_rows, raw_score=True)
        return softmax(np.asarray(raw, dtype=np.float64) + self.calibration.offsets, self.calibration.temperature)


@dataclass
class LoraRun:
    model: BarClassifier
    """The LoRA model (peft backbone) with the class-weight offsets folded into its head."""
    spec: EncoderSpec
    backbone_config: BackboneConfig
    result: TrainResult
    calibration: Calibrated
    reports: dict[str, dict]
    """``lora``, ``scratch``, ``lightgbm``, ``prior``: validation metrics side by side."""
    histories: dict[str, list[dict]]
    split: Split
    valid_y: np.ndarray
    reference: np.ndarray
    facts: dict
    """Sizes and time ranges of the split, for metadata and lineage."""
    lightgbm: LightGBMBaseline | None = None
    importance: FeatureImportance | None = None
    """The LoRA model's permutation importance on validation windows (``importance_windows``)."""
    lightgbm_importance: FeatureImportance | None = None
    """The LightGBM baseline's gain per feature."""


def pretrain_base(data: TrainingData, catalogue: FeatureCatalogue, config: BaseConfig | None = None,
                  progress: Progress | None = None) -> PretrainedBase:
    """Self-supervised pretraining (next-bar return bucket) on the older windows of ``data``.

    With a checkpoint and ``train.epochs == 0`` the checkpoint's weights are the base as
    they are (the bar projection then starts random and is learned during fine-tuning).
    """
    config = config or BaseConfig()
    if config.checkpoint:
        check_checkpoint(Path(config.checkpoint))
    ends = _pretraining_ends(data, catalogue)
    if len(ends) == 0:
        raise ModelError("no window has a next bar of the same symbol: too little data to pretrain")
    order = ends[np.argsort(pd.DatetimeIndex(data.row_ts[ends]).asi8, kind="stable")]
    kept = order[: int(len(order) * (1 - config.holdout_fraction))]
    if len(kept) > config.max_windows:
        kept = kept[np.linspace(0, len(kept) - 1, config.max_windows).astype(np.int64)]
    cut = int(len(kept) * (1 - config.valid_fraction))
    train_ends, valid_ends = kept[:cut], kept[cut:]
    if len(train_ends) < config.train.min_train or len(valid_ends) < config.train.min_valid:
        raise ModelError(f"too little data to pretrain: {len(train_ends)} training and {len(valid_ends)} validation "
                         f"windows before the {config.holdout_fraction:.0%} holdout (minimum "
                         f"{config.train.min_train} and {config.train.min_valid}); materialize more partitions")

    spec = fit_encoder(data.rows[_covered_rows(len(data.rows), train_ends, config.sequence_length)], catalogue,
                       config.sequence_length)
    numeric, categorical = encode(_finite_rows(data.rows), spec)
    train_targets, edges = next_bar_targets(data.rows, catalogue, train_ends)
    valid_targets, _ = next_bar_targets(data.rows, catalogue, valid_ends, edges)
    checkpoint = Path(config.checkpoint) if config.checkpoint else None
    with training_context(config.train):  # seeded: the initial weights are part of the result
        model = BarClassifier.for_spec(spec, None if checkpoint else config.backbone, RETURN_BUCKETS, checkpoint)
    backbone_config = BackboneConfig.from_qwen2(model.backbone.config)
    history: list[dict] = []

    def record(epoch: dict) -> None:
        history.append(epoch)
        if progress is not None:
            progress({"stage": "pretrain", **epoch})

    if config.train.epochs > 0:
        state = pretrain(model, *windows(numeric, categorical, train_ends, config.sequence_length), train_targets,
                         valid=(*windows(numeric, categorical, valid_ends, config.sequence_length), valid_targets),
                         config=config.train, progress=record)
    else:
        state = model.body_state_dict()
    trained_until = pd.Timestamp(data.row_ts[kept + 1].max())
    info = {
        "trained_until": trained_until.isoformat(),
        "first_window": pd.Timestamp(data.row_ts[kept].min()).isoformat(),
        "windows_train": int(len(train_ends)), "windows_valid": int(len(valid_ends)),
        "windows_held_out": int(len(order) - int(len(order) * (1 - config.holdout_fraction))),
        "symbols": list(data.symbols), "checkpoint": config.checkpoint, "bucket_edges": [float(e) for e in edges],
        "history": history, "best_valid_loss": min((e["valid_loss"] for e in history), default=None),
        "feature_set_version": spec.feature_set_version,
    }
    return PretrainedBase(state, spec, backbone_config, info)


def split_for_training(data: TrainingData, config: RunConfig) -> Split:
    """The purged, embargoed time split, refused early when it leaves too little to learn from."""
    n = len(data)
    if n < config.train.min_train + config.train.min_valid:
        raise ModelError(f"too little data for the split: {n} labelled windows, need at least "
                         f"{config.train.min_train + config.train.min_valid} ({config.train.min_train} training + "
                         f"{config.train.min_valid} validation); materialize more partitions")
    split = holdout_split(data.ts, data.t1, config.valid_fraction, config.embargo)
    try:
        check_training_data(data.y[split.train], data.y[split.test], LABELS, config.train)
    except ModelError as error:
        raise ModelError(f"{error} (after a {1 - config.valid_fraction:.0%}/{config.valid_fraction:.0%} time split "
                         f"of {n} windows, {split.purged} purged and {split.embargoed} embargoed)") from None
    return split


def train_lora_run(data: TrainingData, base: PretrainedBase, catalogue: FeatureCatalogue,
                   config: RunConfig | None = None, progress: Progress | None = None) -> LoraRun:
    """Split, encode, LoRA-tune on ``base``, calibrate, and score the baselines on the same split."""
    config = config or RunConfig()
    if data.sequence_length != config.sequence_length:
        raise ModelError(f"the data has windows of {data.sequence_length} bars, the run expects "
                         f"{config.sequence_length}")
    _check_base_fits(base, catalogue)
    split = split_for_training(data, config)
    L = config.sequence_length
    if config.train_stride < 1:
        raise ModelError(f"train_stride must be >= 1, got {config.train_stride}")
    if config.importance_windows < 0 or (config.importance_windows and config.importance_repeats < 1):
        raise ModelError(f"importance_windows must be >= 0 (got {config.importance_windows}) and importance_repeats "
                         f">= 1 (got {config.importance_repeats})")
    strided = split.train[::config.train_stride]
    train_ends, valid_ends = data.ends[strided], data.ends[split.test]
    y_train, y_valid = data.y[strided], data.y[split.test]

    spec = fit_encoder(data.rows[_covered_rows(len(data.rows), train_ends, L)], catalogue, L)
    numeric, categorical = encode(_finite_rows(data.rows), spec)
    train = (*windows(numeric, categorical, train_ends, L), y_train)
    valid = (*windows(numeric, categorical, valid_ends, L), y_valid)

    histories: dict[str, list[dict]] = {}
    result = finetune_lora(base.state, spec, train, valid, config.train, backbone_config=base.backbone_config,
                           progress=_recorder("lora", histories, progress))
    calibration = _calibrate(_logits(result.model, valid, config.train), y_valid, result.class_weights)
    add_logit_offsets(result.model, calibration.offsets)
    reports = {"lora": classification_report(calibration.probs, y_valid, config.threshold)}
    importance = None
    if config.importance_windows:
        if progress is not None:
            progress({"stage": "importance", "message": f"permutation importance: {len(spec.feature_names)} features "
                                                         f"× {config.importance_repeats} shuffles on up to "
                                                         f"{config.importance_windows} validation windows"})
        importance = validation_importance(result.model, spec, valid, calibration.temperature, config)

    unknown = set(config.baselines) - {"scratch", "lightgbm"}
    if unknown:
        raise ModelError(f"unknown baseline(s) {sorted(unknown)}: choose from 'scratch', 'lightgbm'")
    lightgbm = lightgbm_importance = None
    if "scratch" in config.baselines:
        scratch = train_from_scratch(spec, train, valid, config.train, backbone_config=base.backbone_config,
                                     progress=_recorder("scratch", histories, progress))
        scratch_calibrated = _calibrate(_logits(scratch.model, valid, config.train), y_valid, scratch.class_weights)
        reports["scratch"] = classification_report(scratch_calibrated.probs, y_valid, config.threshold)
    if "lightgbm" in config.baselines:
        if progress is not None:
            progress({"stage": "lightgbm"})
        booster = train_lightgbm(data.rows[train_ends], y_train, data.rows[valid_ends], y_valid,
                                 seed=config.train.seed, threads=config.train.threads)
        boosted = _calibrate(booster.predict(data.rows[valid_ends], raw_score=True), y_valid,
                             inverse_frequency_weights(y_train, len(LABELS)))
        reports["lightgbm"] = classification_report(boosted.probs, y_valid, config.threshold)
        lightgbm = LightGBMBaseline(booster, boosted)
        lightgbm_importance = gain_importance(booster, list(spec.feature_names))
    prior = np.bincount(y_train, minlength=len(LABELS)) / len(y_train)
    reports["prior"] = classification_report(np.tile(prior, (len(y_valid), 1)), y_valid, config.threshold)

    rng = np.random.default_rng(config.train.seed)
    sample = np.sort(rng.choice(train_ends, min(config.reference_rows, len(train_ends)), replace=False))
    valid_start = pd.Timestamp(data.ts[split.test].min())
    trained_until = pd.Timestamp(base.info["trained_until"])
    facts = {
        "windows_train": int(len(strided)), "windows_valid": int(len(split.test)),
        "purged": split.purged, "embargoed": split.embargoed,
        "train_start": pd.Timestamp(data.ts[split.train].min()).isoformat(),
        "train_end": pd.Timestamp(data.ts[split.train].max()).isoformat(),
        "valid_start": valid_start.isoformat(), "valid_end": pd.Timestamp(data.ts[split.test].max()).isoformat(),
        "valid_seen_by_base": int((pd.DatetimeIndex(data.ts[split.test]) <= trained_until).sum()),
        "label_counts_train": {name: int((y_train == code).sum()) for code, name in enumerate(LABELS)},
        "label_counts_valid": {name: int((y_valid == code).sum()) for code, name in enumerate(LABELS)},
    }
    return LoraRun(model=result.model, spec=spec, backbone_config=base.backbone_config, result=result,
                   calibration=calibration, reports=reports, histories=histories, split=split, valid_y=y_valid,
                   reference=data.rows[sample], facts=facts, lightgbm=lightgbm, importance=importance,
                   lightgbm_importance=lightgbm_importance)


def validation_importance(model: BarClassifier, spec: EncoderSpec, valid: tuple, temperature: float,
                          config: RunConfig) -> FeatureImportance:
    """Permutation importance of a calibrated model (offsets folded in, ``temperature``) on up to
    ``config.importance_windows`` evenly spaced validation windows, in its validation log loss."""
    numeric, categorical, y = valid
    take = np.unique(np.linspace(0, len(y) - 1, min(config.importance_windows, len(y))).round().astype(np.int64))
    numeric, categorical = numeric[take].numpy(), categorical[take].numpy()  # indexing copies: shuffled in place
    y = np.asarray(y)[take]

    def loss(numeric_windows: np.ndarray, categorical_windows: np.ndarray) -> float:
        with torch.no_grad(), pinned_threads(config.train.threads):
            logits = batched_logits(model, numeric_windows, categorical_windows).numpy()
        return nll(logits, y, temperature)

    names = spec.feature_names
    return permutation_importance(loss, numeric, categorical, [names[i] for i in spec.numeric_indices],
                                  [names[i] for i in spec.categorical_indices], repeats=config.importance_repeats,
                                  seed=config.train.seed)


# --- internals -------------------------------------------------------------------------

def _calibrate(logits: np.ndarray, y: np.ndarray, class_weights) -> Calibrated:
    """Undo class weighting (logit offsets), then fit a temperature on validation NLL."""
    offsets = class_weight_offsets(class_weights)
    corrected = np.asarray(logits, dtype=np.float64) + offsets
    temperature = fit_temperature(corrected, y)
    raw, probs = softmax(logits), softmax(corrected, temperature)
    return Calibrated(temperature, offsets, raw, probs, expected_calibration_error(raw, y),
                      expected_calibration_error(probs, y), nll(logits, y), nll(corrected, y, temperature))


def _logits(model: BarClassifier, split, config: TrainConfig) -> np.ndarray:
    """Validation logits under the run's own thread count, like the training that made them."""
    with torch.no_grad(), pinned_threads(config.threads):
        return batched_logits(model, split[0], split[1]).numpy()


def _recorder(stage: str, histories: dict, progress: Progress | None) -> Progress:
    histories[stage] = []

    def record(epoch: dict) -> None:
        histories[stage].append(epoch)
        if progress is not None:
            progress({"stage": stage, **epoch})

    return record


def _pretraining_ends(data: TrainingData, catalogue: FeatureCatalogue) -> np.ndarray:
    """Window ends whose next row is the same symbol's and has a finite next-bar return."""
    ends = data.ends[data.ends + 1 < len(data.rows)]
    following = data.rows[ends + 1, catalogue.names.index("ret_1")]
    return ends[(data.row_symbol[ends + 1] == data.row_symbol[ends]) & np.isfinite(following)]


def _covered_rows(n_rows: int, ends: np.ndarray, length: int) -> np.ndarray:
    """Mask of the rows inside at least one window of ``length`` ending at ``ends``."""
    delta = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(delta, ends - length + 1, 1)
    np.add.at(delta, ends + 1, -1)
    return np.cumsum(delta[:-1]) > 0


def _finite_rows(rows: np.ndarray) -> np.ndarray:
    """Warm-up rows (NaN) set to 0 so all rows encode; no window ever includes them."""
    return np.where(np.isfinite(rows), rows, 0.0)


def _check_base_fits(base: PretrainedBase, catalogue: FeatureCatalogue) -> None:
    if base.spec.feature_set_version != catalogue.version or base.spec.feature_names != tuple(catalogue.names):
        raise ModelError(f"the base model was pretrained on feature set {base.spec.feature_set_version}, the data "
                         f"has {catalogue.version}: materialize base_model again")


def train_small_package(path, bars: dict, *, epochs: int = 1, lineage: dict | None = None,
                        catalogue: FeatureCatalogue | None = None, timeframe: str = "1m"):
    """A real, quickly trained LoRA package from raw bars (default horizon, all defaults but
    ``epochs``): what tests, benchmarks and local trials need when no registry model exists.
    ``bars`` maps symbol → bars of ``timeframe``."""
    from smc_core.dataset import from_bars
    from smc_core.features import CATALOGUE
    from smc_core.labels import Horizon
    from smc_core.model.package import save_package

    catalogue = catalogue or CATALOGUE
    data, _ = from_bars(bars, Horizon(), RunConfig().sequence_length)
    base = pretrain_base(data, catalogue, BaseConfig(train=TrainConfig(epochs=epochs)))
    run = train_lora_run(data, base, catalogue, RunConfig(baselines=(), importance_windows=0,  # a helper's model
                                                          train=TrainConfig(epochs=epochs)))
    return save_package(path, run.model, run.spec, run.backbone_config, run.calibration.temperature,
                        lineage or {"model_version": "local", "data": {**run.facts, "horizon": Horizon().name,
                                                                       "symbols": sorted(bars), "timeframe": timeframe}},
                        run.reference,
                        reference_probabilities=run.calibration.probs)
