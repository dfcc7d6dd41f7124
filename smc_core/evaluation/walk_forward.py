"""Walk-forward evaluation: the model retrained per fold as it would be live, then traded.

Each fold trains on the past only (expanding or rolling), purged by label end time ``t1``
and embargoed, pretrains its own base on that past (so no fold's test bars were ever seen,
not even self-supervised), fine-tunes LoRA, and predicts the fold's test windows with its
calibrated probabilities. The out-of-sample probabilities of all folds are then traded bar
by bar under the policy, and under every candidate policy the experiment tries (for PBO).

Calibration is checked on the same out-of-sample windows. Each fold has three disjoint sets
(``FoldSets``): ``train`` (the windows its model learns from), ``valid`` (the newest part of
its past, purged and embargoed from ``train``: early stopping watches it and the temperature
is fitted on it, the standard temperature-scaling recipe) and ``check`` (the fold's test
block: every label of the other two was known before it begins, by the purge). The
calibration gate's ECE is measured over the ``check`` windows of all folds, which neither
early stopping nor the temperature ever saw: the ECE on ``valid`` (``valid_ece`` per fold,
what the training run reports as ``ece_after``) is flattered by the temperature having been
fitted there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd
import torch

from smc_core.dataset import TrainingData
from smc_core.evaluation.backtest import BacktestResult, InstrumentSpec, backtest, one_spec, spec_of
from smc_core.evaluation.gates import Champion, GateConfig, GateResult, evaluate_gates, trial_sharpes_of
from smc_core.evaluation.splits import Split, walk_forward_splits
from smc_core.errors import SmcError
from smc_core.features import FeatureCatalogue
from smc_core.model.backbone import batched_logits
from smc_core.model.calibration import expected_calibration_error, softmax
from smc_core.model.encoding import encode, windows
from smc_core.model.pipeline import BaseConfig, RunConfig, pretrain_base, train_lora_run
from smc_core.model.train import pinned_threads
from smc_core.policy import PolicyConfig

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class WalkForwardConfig:
    folds: int = 3
    min_train_fraction: float = 0.5
    expanding: bool = True
    embargo: pd.Timedelta = pd.Timedelta(minutes=60)
    candidate_thresholds: tuple[float, ...] = (0.55, 0.60, 0.65, 0.70, 0.75)
    """Entry thresholds tried as candidate policies (PBO's configurations, DSR's trials); none below
    the seed's 0.55, under which a call is never traded."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    instrument: InstrumentSpec | dict[str, InstrumentSpec] = field(default_factory=InstrumentSpec)
    """One spec for every symbol, or each symbol's (costs from the instruments file)."""


@dataclass(frozen=True)
class FoldSets:
    """One fold's three disjoint sets of windows, as positions in the evaluated data (see the
    module docstring). ``train`` is the pool the model learns from (every ``train_stride``-th
    window of it is fitted on)."""

    train: np.ndarray
    valid: np.ndarray
    """Early stopping and the temperature."""
    check: np.ndarray
    """Traded out of sample; where calibration is measured."""


@dataclass
class WalkForward:
    probabilities: np.ndarray
    """[n_samples, 3] out-of-sample calibrated probabilities; NaN for samples never tested."""
    baseline_probabilities: np.ndarray
    """The same for the LightGBM baseline trained on each fold's past."""
    folds: list[dict]
    sets: list[FoldSets]
    ece: float
    """ECE of ``probabilities`` over every fold's ``check`` windows (NaN when none was tested):
    the calibration gate's statistic."""


@dataclass
class FoldResult:
    """One fold's out-of-sample output: what a separate worker (a Dagster step) hands back."""

    number: int
    test: np.ndarray
    """Positions of the fold's test samples in the data."""
    probabilities: np.ndarray
    baseline_probabilities: np.ndarray
    facts: dict
    sets: FoldSets


def fold_splits(data: TrainingData, config: WalkForwardConfig) -> list[Split]:
    """The walk-forward folds of ``data``: each trains only on its purged, embargoed past."""
    return walk_forward_splits(data.ts, data.t1, config.folds, config.min_train_fraction, config.expanding,
                               config.embargo)


def train_fold(data: TrainingData, split: Split, number: int, folds: int, catalogue: FeatureCatalogue,
               base_config: BaseConfig, run_config: RunConfig, progress: Progress | None = None) -> FoldResult:
    """One fold from scratch: a base pretrained on its past, LoRA and LightGBM on it, its test windows scored.

    Folds share nothing, so they run in any order or on any worker with the same result."""
    past = _subset(data, split.train)
    report = _staged(progress, number, folds)
    base = pretrain_base(past, catalogue, base_config, progress=report)
    run = train_lora_run(past, base, catalogue, replace(run_config, baselines=("lightgbm",), importance_windows=0),
                         progress=report)  # a fold's model is scored, not kept: no importance
    probabilities = predict_samples(run.model, run.spec, run.calibration.temperature, data, split.test,
                                    threads=run_config.train.threads)
    baseline = run.lightgbm.predict_proba(data.rows[data.ends[split.test]])
    ts = pd.DatetimeIndex(data.ts)
    facts = {"fold": number, "train_windows": int(len(split.train)), "test_windows": int(len(split.test)),
             "purged": split.purged, "embargoed": split.embargoed,
             "train_end": ts[split.train].max().isoformat(), "test_start": ts[split.test].min().isoformat(),
             "test_end": ts[split.test].max().isoformat(), "best_epoch": run.result.best_epoch,
             "valid_log_loss": run.reports["lora"]["log_loss"], "temperature": run.calibration.temperature,
             "valid_ece": run.calibration.ece,
             "check_ece": expected_calibration_error(probabilities, data.y[split.test]),
             "weights_sha256": weights_sha256(run.model)}
    sets = FoldSets(train=split.train[run.split.train], valid=split.train[run.split.test], check=split.test)
    return FoldResult(number, split.test, probabilities, baseline, facts, sets)


def assemble(data: TrainingData, folds: list[FoldResult]) -> WalkForward:
    """The folds' outputs in one walk-forward, in fold order whatever order they finished in."""
    probabilities = np.full((len(data), 3), np.nan)
    baseline = np.full((len(data), 3), np.nan)
    ordered = sorted(folds, key=lambda fold: fold.number)
    for fold in ordered:
        probabilities[fold.test] = fold.probabilities
        baseline[fold.test] = fold.baseline_probabilities
    tested = np.flatnonzero(np.isfinite(probabilities).all(axis=1))
    ece = expected_calibration_error(probabilities[tested], data.y[tested]) if len(tested) else float("nan")
    return WalkForward(probabilities, baseline, [fold.facts for fold in ordered], [fold.sets for fold in ordered],
                       ece)


def walk_forward(data: TrainingData, catalogue: FeatureCatalogue, base_config: BaseConfig, run_config: RunConfig,
                 config: WalkForwardConfig = WalkForwardConfig(), progress: Progress | None = None) -> WalkForward:
    splits = fold_splits(data, config)
    return assemble(data, [train_fold(data, split, number, len(splits), catalogue, base_config, run_config, progress)
                           for number, split in enumerate(splits, start=1)])


def weights_sha256(model: torch.nn.Module) -> str:
    """Digest of a model's weights (names, dtypes, shapes and bytes): equal digests, equal models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def predict_samples(model, spec, temperature: float, data: TrainingData, positions: np.ndarray,
                    batch_size: int = 1024, threads: int = 1) -> np.ndarray:
    """Calibrated probabilities [len(positions), 3] for samples of ``data`` under one model's encoder
    (``threads`` set deliberately: the machine's count is slower for this model and not part of the result)."""
    numeric, categorical = encode(np.where(np.isfinite(data.rows), data.rows, 0.0), spec)
    batch = windows(numeric, categorical, data.ends[positions], spec.sequence_length)
    with torch.inference_mode(), pinned_threads(threads):
        logits = batched_logits(model.eval(), batch[0], batch[1], batch_size).numpy()
    return softmax(logits, temperature)


def bar_probabilities(data: TrainingData, probabilities: np.ndarray) -> dict[str, pd.DataFrame]:
    """Per symbol, a frame indexed by bar close time with the samples' probabilities (tested ones only)."""
    tested = np.isfinite(probabilities).all(axis=1)
    out = {}
    for code, symbol in enumerate(data.symbols):
        mine = tested & (data.row_symbol[data.ends] == code)
        out[symbol] = pd.DataFrame(probabilities[mine], columns=["long", "short", "skip"],
                                   index=pd.DatetimeIndex(data.row_ts[data.ends[mine]], name="ts"))
    return out


def backtest_portfolio(bars: dict[str, pd.DataFrame], probabilities: dict[str, pd.DataFrame],
                       policy: PolicyConfig, instrument: InstrumentSpec | dict[str, InstrumentSpec]) -> BacktestResult:
    """One backtest per symbol over its bars from the first tested bar on, summed per bar time;
    ``instrument`` one spec for all, or each symbol's.

    ``bars`` frames carry ts, open, high, low, close, atr, session; bars without a
    prediction simply get no new entry (positions still run to their orders).
    """
    parts, trades = [], []
    for symbol, frame in bars.items():
        predicted = probabilities.get(symbol)
        if predicted is None or predicted.empty:
            continue
        frame = frame[frame["ts"] >= predicted.index.min()].reset_index(drop=True)
        aligned = predicted.reindex(pd.DatetimeIndex(frame["ts"])).to_numpy()
        result = backtest(frame, aligned, policy, spec_of(instrument, symbol))
        parts.append(pd.DataFrame({"ts": frame["ts"], "session": frame["session"], "pnl": result.pnl,
                                   "in_market": result.in_market}))
        trades.append(result.trades.assign(symbol=symbol))
    if not parts:
        raise ValueError("no symbol has out-of-sample predictions to trade")
    combined = pd.concat(parts).groupby("ts", sort=True).agg(session=("session", "first"), pnl=("pnl", "sum"),
                                                            in_market=("in_market", "max"))
    return BacktestResult(combined["pnl"].to_numpy(), combined["in_market"].to_numpy(dtype=bool),
                          pd.concat(trades, ignore_index=True), combined.index.to_numpy(),
                          combined["session"].to_numpy(), one_spec(instrument))


def _subset(data: TrainingData, positions: np.ndarray) -> TrainingData:
    return TrainingData(data.rows, data.row_ts, data.row_symbol, data.ends[positions], data.y[positions],
                        data.t1[positions], data.symbols, data.sequence_length)


def _staged(progress: Progress | None, fold: int, folds: int) -> Progress | None:
    """The fold's training events, named for the fold and carrying ``fold`` of ``folds``."""
    if progress is None:
        return None
    return lambda event: progress({**event, "stage": f"fold {fold} {event['stage']}", "fold": fold, "folds": folds})


# --- the challenger's evaluation -----------------------------------------------------------

@dataclass
class ChampionModel:
    """What the champion needs to be backtested on the challenger's bars."""

    version: str
    model: object
    spec: object
    temperature: float
    entry_threshold: float


@dataclass
class Evaluation:
    walk: WalkForward
    candidates: dict[float, BacktestResult]
    """Entry threshold → backtest of the challenger under that candidate policy (out of sample)."""
    baseline_candidates: dict[float, BacktestResult]
    """The LightGBM baseline under the same policies: configurations tried too, so they count
    in PBO and in the DSR's trials."""
    selected_threshold: float
    champion: Champion | None
    gates: list[GateResult]
    trial_sharpes: dict[str, float]

    @property
    def challenger(self) -> BacktestResult:
        return self.candidates[self.selected_threshold]

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)


def candidate_policy(policy: PolicyConfig, threshold: float) -> PolicyConfig:
    """The policy with its entry threshold moved (full size stays at or above it)."""
    return replace(policy, half_threshold=threshold, full_threshold=max(threshold, policy.full_threshold))


def evaluate_challenger(data: TrainingData, bars: dict[str, pd.DataFrame], catalogue: FeatureCatalogue,
                        base_config: BaseConfig, run_config: RunConfig, config: WalkForwardConfig,
                        gate_config: GateConfig, *, latency_ms: float,
                        champion: ChampionModel | str | None, trial_history: np.ndarray,
                        progress: Progress | None = None) -> Evaluation:
    """Walk-forward, every candidate policy traded, the best selected, the champion traded on the
    same bars, then every gate (calibration: the out-of-sample ECE, ``WalkForward.ece``).
    ``champion`` is None (first model) or a reason it cannot be used."""
    walk = walk_forward(data, catalogue, base_config, run_config, config, progress)
    return judge_walk_forward(data, bars, catalogue, walk, config, gate_config, latency_ms=latency_ms,
                              champion=champion, trial_history=trial_history)


def judge_walk_forward(data: TrainingData, bars: dict[str, pd.DataFrame], catalogue: FeatureCatalogue,
                       walk: WalkForward, config: WalkForwardConfig, gate_config: GateConfig, *,
                       latency_ms: float, champion: ChampionModel | str | None,
                       trial_history: np.ndarray) -> Evaluation:
    """The out-of-sample probabilities of a finished walk-forward traded and gated (see evaluate_challenger)."""

    def trade(probabilities: np.ndarray) -> dict[float, BacktestResult]:
        by_bar = bar_probabilities(data, probabilities)
        return {t: backtest_portfolio(bars, by_bar, candidate_policy(config.policy, t), config.instrument)
                for t in config.candidate_thresholds}

    candidates, baseline_candidates = trade(walk.probabilities), trade(walk.baseline_probabilities)
    sharpes = {t: result.metrics()["sharpe"] for t, result in candidates.items()}
    finite = {t: s for t, s in sharpes.items() if np.isfinite(s)}
    selected = max(finite, key=finite.get) if finite else min(
        candidates, key=lambda t: abs(t - config.policy.half_threshold))
    tried = {f"lora threshold={t}": r for t, r in candidates.items()} | {
        f"lightgbm threshold={t}": r for t, r in baseline_candidates.items()}
    matrix = np.column_stack([result.returns for result in tried.values()])
    this_run = dict(zip(tried, (float(v) for v in trial_sharpes_of(matrix))))
    history = np.concatenate([np.asarray(trial_history, dtype=np.float64), list(this_run.values())])
    rival = _champion_backtest(champion, data, walk, bars, config, catalogue)
    gates = evaluate_gates(candidates[selected], matrix, history, rival, walk.ece, latency_ms, gate_config)
    return Evaluation(walk, candidates, baseline_candidates, selected, rival, gates, this_run)


def _champion_backtest(champion, data, walk, bars, config, catalogue) -> Champion | None:
    if champion is None:
        return None
    if isinstance(champion, str):
        return Champion(error=champion)
    if tuple(champion.spec.feature_names) != tuple(catalogue.names):
        return Champion(version=champion.version, error=f"champion {champion.version} uses feature set "
                        f"{champion.spec.feature_set_version}, the data {catalogue.version}: it cannot be compared")
    tested = np.flatnonzero(np.isfinite(walk.probabilities).all(axis=1))
    probabilities = np.full_like(walk.probabilities, np.nan)
    try:
        probabilities[tested] = predict_samples(champion.model, champion.spec, champion.temperature, data, tested)
    except (ValueError, SmcError) as error:
        return Champion(version=champion.version, error=f"champion {champion.version} cannot score these bars: {error}")
    policy = candidate_policy(config.policy, champion.entry_threshold)
    result = backtest_portfolio(bars, bar_probabilities(data, probabilities), policy, config.instrument)
    return Champion(version=champion.version, result=result)
