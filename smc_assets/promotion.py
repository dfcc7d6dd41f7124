"""Promotion: ``challenger_evaluation`` (walk-forward backtest with costs; every statistical
gate an asset check) and ``champion`` (decides: moves the registry alias or records a refusal),
plus rollback.

A refusal is a decision, not a crash: the run succeeds, the gate checks say which failed and
why, and ``champion`` records the refusal (``model_promotions``, the registry version's
description, MLflow tags, an ``info`` alert, an observation on the ``champion`` asset) without
materializing, so the alias stays and ``bento_artifact`` downstream is skipped. The gates stay
blocking for the alias: ``champion`` moves it only when every gate ran and passed.

``challenger_evaluation`` is a graph of steps, one asset in the UI: ``plan_evaluation`` fixes
the data and the folds, one ``evaluate_fold[fold_N]`` step trains each fold (so an executor with
workers, SMC_EXECUTOR=celery, spreads them), ``judge_challenger`` trades and gates them.
"""

import json
import math
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, AssetIn, AssetKey,
                     AssetsDefinition,
                     AssetObservation, Config, ConfigMapping, DynamicOut, DynamicOutput, Failure, In,
                     MaterializeResult, MetadataValue, Nothing, OpExecutionContext, Out, Output, asset, graph_asset,
                     op)
from pydantic import Field

from smc_assets.common import checked, image_markdown, inline_chart, number_or_reason
from smc_assets.model import LoraModelConfig, lora_model
from smc_core.dataset import TrainingData, load_training_data
from smc_core.evaluation.backtest import InstrumentSpec, equity_chart, one_spec, undefined_metrics
from smc_core.instruments import instrument
from smc_core.evaluation.gates import GateConfig
from smc_core.evaluation.splits import Split
from smc_core.evaluation.walk_forward import (ChampionModel, FoldResult, WalkForwardConfig, assemble, fold_splits,
                                             judge_walk_forward, train_fold)
from smc_core.features import CATALOGUE
from smc_core.jsonable import plain
from smc_core.lines import MAIN_LINE, ModelLine
from smc_core.model import Predictor, TrainConfig, load_package
from smc_core.model.package import package_horizon
from smc_core.model.pipeline import BaseConfig, RunConfig
from smc_core.policy import PolicyConfig
from smc_core.monitoring import MonitoringSettings, prediction_times
from smc_core.outcomes import live_summary, resolve_outcomes
from smc_core.promotion import (CHALLENGER, CHAMPION, end_shadow, entry_threshold_of, judge, promote, record_trials,
                                refuse, rollback, shadow_state, shadow_verdict, start_ab_test, start_shadow,
                                trial_sharpes)
from smc_core.safety import SafetySettings
from smc_core.registry import MODEL_NAME, alias_version, package_path
from smc_core.risk import RiskTerms
from smc_core.store import load_bars, read_features
from smc_core.timeframe import parse_timeframe

GATES = ("deflated_sharpe", "pbo", "spa", "versus_champion", "calibration", "latency")
GATE_DESCRIPTIONS = {
    "deflated_sharpe": "Deflated Sharpe Ratio above its threshold, trials counted from the whole history.",
    "pbo": "Probability of Backtest Overfitting (CSCV, 16 blocks) across the candidate policies at most its threshold.",
    "spa": "Hansen's SPA consistent p-value against flat (and the champion) below its threshold.",
    "versus_champion": "Sharpe at least 0.1 above the champion's, max drawdown no more than 2 points worse.",
    "calibration": "ECE of the calibrated walk-forward probabilities on windows neither early stopping nor the "
                   "temperature saw, within budget.",
    "latency": "Single-window inference p50 within budget.",
}


_GATES, _POLICY, _INSTRUMENT, _WALK = GateConfig(), PolicyConfig(), InstrumentSpec(), WalkForwardConfig()


class PromotionConfig(Config):
    """Launchpad knobs; every default is the one of the smc_core object it configures."""

    folds: int = Field(default=_WALK.folds, description="Walk-forward folds (expanding), each retrained from scratch.")
    min_train_fraction: float = Field(default=_WALK.min_train_fraction,
                                      description="Share of windows before the first test fold.")
    embargo_minutes: int = int(_WALK.embargo.total_seconds() // 60)
    base_epochs: int = Field(default=3, description="Per-fold base pretraining epochs (0 for a checkpoint base).")
    candidate_thresholds: list[float] = Field(default_factory=lambda: list(_WALK.candidate_thresholds),
                                              description="Entry thresholds tried; the best is selected.")
    full_threshold: float = _POLICY.full_threshold
    contracts: int = Field(default=_POLICY.contracts, description="Contracts at full size (half size: half of it).")
    stop_atr: float = _POLICY.stop_atr
    target_atr: float = _POLICY.target_atr
    tick_size: Optional[float] = Field(default=None, description="Empty: each symbol's, from the instruments file.")
    tick_value: Optional[float] = Field(default=None, description="Empty: each symbol's, from the instruments file.")
    commission: Optional[float] = Field(default=None, description="Dollars per contract per fill; empty: each "
                                                                  "symbol's, from the instruments file.")
    slippage_ticks: Optional[float] = Field(default=None, description="Empty: each symbol's, from the instruments "
                                                                      "file.")
    capital: float = _INSTRUMENT.capital
    min_dsr: float = _GATES.min_dsr
    max_pbo: float = _GATES.max_pbo
    max_spa_pvalue: float = _GATES.max_spa_pvalue
    min_sharpe_improvement: float = _GATES.min_sharpe_improvement
    max_drawdown_worsening: float = _GATES.max_drawdown_worsening
    max_ece: float = _GATES.max_ece
    max_latency_ms: float = _GATES.max_latency_ms
    min_trades: int = _GATES.min_trades

    def walk_forward(self, symbols: list[str]) -> WalkForwardConfig:
        policy = PolicyConfig(full_threshold=max(self.full_threshold, min(self.candidate_thresholds)),
                              half_threshold=min(self.candidate_thresholds), contracts=self.contracts,
                              stop_atr=self.stop_atr, target_atr=self.target_atr)
        overrides = {name: value for name, value in _matching(self, InstrumentSpec).items() if value is not None}
        costs = {symbol: replace(instrument(symbol).costs(), **overrides) for symbol in symbols}
        one = next(iter(costs.values()))
        instrument_terms = one if all(spec == replace(one, symbol=spec.symbol) for spec in costs.values()) else costs
        return WalkForwardConfig(folds=self.folds, min_train_fraction=self.min_train_fraction,
                                 embargo=pd.Timedelta(minutes=self.embargo_minutes),
                                 candidate_thresholds=tuple(self.candidate_thresholds), policy=policy,
                                 instrument=instrument_terms)

    def gates(self) -> GateConfig:
        return GateConfig(**_matching(self, GateConfig))


def _matching(config: Config, target) -> dict:
    """The config's values for the fields ``target`` (a dataclass) shares with it."""
    names = set(type(config).model_fields)
    return {f.name: getattr(config, f.name) for f in dataclass_fields(target) if f.name in names}


@dataclass
class EvaluationPlan:
    """What every step of ``challenger_evaluation`` works from, fixed once by its first step and
    handed on through the IO manager, so each fold step (on any worker) sees the same inputs."""

    version: str
    mlflow_run_id: str
    data: TrainingData
    bars: dict[str, pd.DataFrame]
    splits: list[Split]
    base_config: BaseConfig
    run_config: RunConfig
    walk_config: WalkForwardConfig
    gate_config: GateConfig
    latency_ms: float


class ChampionConfig(Config):
    shadow_hours: Optional[float] = Field(
        default=None, description="Serve a gated challenger in shadow this long before promoting it on its live "
                                  "record; 0 promotes at once. Empty: SMC_SHADOW_HOURS (default 0).")
    ab_share: Optional[float] = Field(
        default=None, description="Give a gated challenger this share of live requests in an A/B test (before a "
                                  "shadow period); 0: none. Empty: SMC_AB_SHARE (default 0).")


def _risk_terms(evaluation_metadata: dict) -> RiskTerms | None:
    """The stop/target terms the challenger was evaluated with (absent on evaluations made before they were kept)."""
    terms = evaluation_metadata.get("risk_terms")
    return RiskTerms(**terms) if terms else None


def _refuse(context: AssetExecutionContext, db, version: str, verdict, gates: list[dict], meta: dict, name: str,
            champion_key: AssetKey):
    """Record a refusal everywhere it is looked for; the champion asset is observed, not materialized."""
    failed = tuple(verdict.failed)
    alert = refuse(db, version, verdict.reason, gates=gates, name=name,
                   metrics={"challenger": meta["metrics"], "champion": meta.get("champion_metrics")},
                   dagster_run_id=context.run.run_id, failed=failed)
    kept = alias_version(CHAMPION, name=name)
    _end_this_runs_mlflow_run(context, version, name)
    context.log.warning(f"{name}/{version} refused ({verdict.reason}); champion stays "
                        f"{f'{name}/{kept}' if kept else 'none'} (alert {alert})")
    yield AssetObservation(asset_key=champion_key, description=f"{name}/{version} refused", metadata={
        "decision": "refused", "challenger": f"{name}/{version}",
        "champion": f"{name}/{kept}" if kept else "none (unchanged)",
        "failed_gates": ", ".join(failed), "reason": MetadataValue.md(_failed_markdown(verdict)), "alert_id": alert})


def _end_this_runs_mlflow_run(context: AssetExecutionContext, version: str, name: str) -> None:
    """In a job that trained the challenger (retrain_job), dagster-mlflow ends the MLflow run after
    the last step, bento_artifact, which a refusal skips: end it here, FINISHED, as that hook would."""
    import mlflow

    active, client = mlflow.active_run(), mlflow.MlflowClient()
    if active is None or active.info.run_id != client.get_model_version(name, version).run_id:
        return
    if client.get_run(active.info.run_id).data.tags.get("dagster_run_id") == context.run.run_id:
        mlflow.end_run()


def _failed_markdown(verdict) -> str:
    return "\n".join(f"- **{name}**: {why}" for name, why in verdict.failed.items())


@asset(
    required_resource_keys={"database", "tracking"},
    group_name="promotion",
    kinds={"mlflow"},
    description="Ends a shadow period: the shadow's live outcomes against the champion's on the same requests decide "
                "promotion or refusal; the shadow alias is cleared.",
)
def shadow_review(context: AssetExecutionContext) -> MaterializeResult:
    db = context.resources.database.database()
    context.resources.tracking.client()
    state = checked(lambda: shadow_state(db))
    if state is None:
        raise Failure(description="no model is in shadow")
    shadow_version, champion_version = f"{MODEL_NAME}/{state['version']}", f"{MODEL_NAME}/{alias_version(CHAMPION)}"
    since, _ = prediction_times(db, shadow_version, shadow=True)  # bar time, not wall time: replays count too
    if since is None:
        raise Failure(description=f"{shadow_version} has logged no shadow predictions: is the service running with "
                                  "SHADOW_ALIAS=shadow?")
    horizon = package_horizon(package_path(state["version"]))
    if horizon is None:
        raise Failure(description=f"{shadow_version} records no label horizon in its lineage: its outcomes cannot "
                                  "be resolved")
    checked(lambda: resolve_outcomes(db, horizon=horizon, model_versions=[shadow_version, champion_version]))
    # both on the requests since the shadow started: the shadow's rows and the champion's answers to the same bars
    shadow_live = live_summary(db, shadow_version, shadow=True, since=since)
    champion_live = live_summary(db, champion_version, shadow=False, since=since)
    passed, reason = shadow_verdict(shadow_live, champion_live, MonitoringSettings.from_env().min_trades)
    before = end_shadow(db, state["version"], passed, reason, metrics={"shadow": shadow_live, "champion": champion_live},
                        dagster_run_id=context.run.run_id)
    context.log.info(f"{shadow_version} {'promoted' if passed else 'refused'}: {reason}")
    return MaterializeResult(metadata={
        "verdict": "promoted" if passed else "refused", "reason": reason, "shadow": shadow_version,
        "champion_before": f"{MODEL_NAME}/{before}" if before else "none",
        "shadow_live": MetadataValue.json(shadow_live), "champion_live": MetadataValue.json(champion_live)})


class RollbackConfig(Config):
    reason: str = Field(default="", description="Why (the circuit breaker's rule when it requests the run); "
                                                "recorded in model_promotions.")
    model: str = Field(default=MODEL_NAME, description="The model line's registered model (smc-lora-5m-h15 …); "
                                                       "default: the main line's.")


@op(required_resource_keys={"database", "tracking"},
    description="Move 'champion' back to 'previous'; the service follows the alias within seconds.")
def rollback_champion(context: OpExecutionContext, config: RollbackConfig) -> None:
    context.resources.tracking.client()
    rolled_back, restored = checked(lambda: rollback(context.resources.database.database(), name=config.model,
                                                      dagster_run_id=context.run.run_id, reason=config.reason or None))
    context.log.info(f"champion rolled back from {config.model}/{rolled_back} to {config.model}/{restored}")


def gate_markdown(gates: list[dict]) -> str:
    lines = ["| gate | verdict | statistic | threshold | reason |", "|---|---|---|---|---|"]
    for gate in gates:
        statistic = gate["statistic"]
        shown = "–" if statistic is None or statistic != statistic else f"{statistic:.4f}"
        lines.append(f"| {gate['name']} | {'pass' if gate['passed'] else 'FAIL'} | {shown} | {gate['threshold']} | "
                     f"{gate['reason']} |")
    return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------

def _champion(challenger: str, default_threshold: float, name: str):
    """The champion to compare with: None (first model), a ChampionModel, or why it cannot be used."""
    version = alias_version(CHAMPION, name=name)
    if version is None or version == challenger:
        return None
    try:
        package = load_package(package_path(version, name=name))
    except Exception as error:  # a missing or broken package must fail the gates, not the run
        return f"champion {version}: its package cannot be loaded ({error})"
    threshold = entry_threshold_of(version, name=name)
    return ChampionModel(version, package.model, package.spec, package.temperature,
                         threshold if threshold is not None else default_threshold)


def _traded_bars(context, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Bars with the ATR feature and the trading-day session number the backtest needs."""
    db = context.resources.database.database()
    landing = context.resources.landing
    resampled = dict(landing.timeframes).get(timeframe, False)  # a line on 5m of 1-minute data: bars_5m
    bars = load_bars(db, symbol, timeframe, start, end, resampled=resampled)
    atr = read_features(db, symbol, timeframe, start, end, CATALOGUE)["atr"]
    bars = bars.assign(atr=atr.reindex(pd.DatetimeIndex(bars["ts"])).to_numpy())
    return bars.assign(session=landing.calendar(symbol).position_sessions(bars["ts"], parse_timeframe(timeframe)))


def _log_to_training_run(client, run_id: str, evaluation, metrics: dict, folder: Path) -> None:
    """Gate statistics and backtest figures go to the challenger's own MLflow run."""
    for gate in evaluation.gates:
        if gate.statistic == gate.statistic:
            client.log_metric(run_id, f"gate_{gate.name}", float(gate.statistic))
        client.set_tag(run_id, f"gate_{gate.name}", "pass" if gate.passed else "fail")
    for key, value in metrics.items():
        if value == value:
            client.log_metric(run_id, f"backtest_{key}", float(value))
    client.set_tag(run_id, "gates", "passed" if evaluation.passed else "refused")
    client.log_metric(run_id, "selected_threshold", float(evaluation.selected_threshold))
    for name in ("gates.json", "equity.png"):
        client.log_artifact(run_id, str(folder / name), "evaluation")


def _backtest_markdown(metrics: dict, rival: dict | None, evaluation) -> str:
    header = "| metric | challenger |" + (" champion |" if rival else "")
    lines = [header, "|---|---|" + ("---|" if rival else "")]
    why = {**undefined_metrics(rival or {}), **undefined_metrics(metrics)}
    for key, value in metrics.items():
        row = f"| {key} | {_cell(value)} |" + (f" {_cell(rival[key])} |" if rival else "")
        lines.append(row)
    lines.append("")
    if why:
        lines.append("– " + "; ".join(f"{key}: {text}" for key, text in why.items()))
        lines.append("")
    for name, candidates in (("challenger", evaluation.candidates), ("LightGBM", evaluation.baseline_candidates)):
        lines.append(f"{name} by entry threshold (annualised Sharpe, trades; – undefined): " + ", ".join(
            f"{t}: {_cell(r.metrics()['sharpe'], 2)}, {len(r.trades)}" for t, r in candidates.items()))
        lines.append("")
    return "\n".join(lines)


def _cell(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _equity_inline(evaluation) -> str:
    """The walk-forward equity (and the champion's on the same bars) small enough to show inline."""
    mine = evaluation.challenger
    capital = mine.instrument.capital
    lines = [(np.arange(len(mine.pnl)), capital + np.cumsum(mine.pnl), "#1f77b4")]
    caption = f"Walk-forward equity over {len(mine.pnl):,} bars: challenger (blue) ${capital:,.0f} → " \
              f"${capital + mine.pnl.sum():,.0f}"
    rival = evaluation.champion.result if evaluation.champion else None
    if rival is not None:
        lines.append((np.arange(len(rival.pnl)), rival.instrument.capital + np.cumsum(rival.pnl), "#999"))
        caption += f", champion (grey) → ${rival.instrument.capital + rival.pnl.sum():,.0f}"
    return inline_chart(caption + " (full chart: equity_chart)", lines)


def promotion_assets(line: ModelLine = MAIN_LINE) -> tuple[AssetsDefinition, AssetsDefinition]:
    """``challenger_evaluation`` (with its gate checks and steps) and ``champion`` of one model line
    (``smc_core.lines``): its registered model's aliases, its timeframe's bars; an added line's
    keys, steps and checks carry its prefix."""
    evaluation_key, champion_key = AssetKey([*line.key_prefix, "challenger_evaluation"]), AssetKey(
        [*line.key_prefix, "champion"])
    step = line.step

    @op(name=step("plan_evaluation"), ins={"challenger": In(Nothing)},
        out={"plan": Out(EvaluationPlan, description="The data, bars, folds and configs of the evaluation."),
             "folds": DynamicOut(int, description="One fold number per walk-forward fold: each a step of its own.")},
        required_resource_keys={"database", "landing", "tracking"},
        description="Loads the challenger's package and its own data window, splits the walk-forward folds.")
    def plan_evaluation(context: OpExecutionContext, config: PromotionConfig):
        db = context.resources.database.database()
        context.resources.tracking.client()  # sets the tracking URI for this step
        version = alias_version(CHALLENGER, name=line.name)
        if version is None:
            raise Failure(description=f"{line.name} has no version with the alias 'challenger': materialize "
                                      f"{AssetKey([*line.key_prefix, 'lora_model']).to_user_string()} first")
        package = checked(lambda: load_package(package_path(version, name=line.name)))
        lineage = package.lineage
        training = LoraModelConfig(**lineage["config"])
        data_facts = lineage["data"]
        end = pd.Timestamp(data_facts["valid_end"])
        # the challenger's own window: a sliding-window retrain (recent_days) is judged on that
        # window, not on the older regime it deliberately left out
        start = pd.Timestamp(data_facts["train_start"]) - pd.Timedelta(microseconds=1)
        data = checked(lambda: load_training_data(db, data_facts["symbols"], data_facts["timeframe"], start, end,
                                                   CATALOGUE, data_facts["horizon"], training.sequence_length))
        bars = {symbol: _traded_bars(context, symbol, data_facts["timeframe"], start, end) for symbol in data.symbols}
        walk_config = checked(lambda: config.walk_forward(data.symbols))
        base_config = BaseConfig(backbone=package.backbone_config, checkpoint=lineage["base"].get("checkpoint"),
                                 sequence_length=training.sequence_length,
                                 train=TrainConfig(
                                     epochs=0 if lineage["base"].get("checkpoint") else config.base_epochs,
                                     patience=2, seed=training.seed, threads=training.threads))
        splits = checked(lambda: fold_splits(data, walk_config))
        plan = EvaluationPlan(version, lineage["mlflow_run_id"], data, bars, splits, base_config, training.run_config(),
                              walk_config, config.gates(), Predictor(package).single_window_latency_ms())
        context.log.info(f"evaluating {line.name}/{version}: {len(data)} windows, {len(splits)} walk-forward folds")
        yield Output(plan, "plan")
        for number in range(1, len(splits) + 1):
            yield DynamicOutput(number, output_name="folds", mapping_key=f"fold_{number}")

    @op(name=step("evaluate_fold"),
        description="One walk-forward fold: a base pretrained on the fold's past, LoRA and LightGBM on it, its test "
                    "windows scored. Folds are independent steps, so an executor with workers runs them in parallel.")
    def evaluate_fold(context: OpExecutionContext, plan: EvaluationPlan, number: int) -> FoldResult:
        def progress(event: dict) -> None:
            if "epoch" in event:
                context.log.info(f"{event['stage']} epoch {event['epoch']}: valid loss {event['valid_loss']:.4f}")

        return checked(lambda: train_fold(plan.data, plan.splits[number - 1], number, len(plan.splits), CATALOGUE,
                                          plan.base_config, plan.run_config, progress))

    @op(name=step("judge_challenger"),
        out={"result": Out(description="challenger_evaluation (its figures are the materialization's metadata)"),
             **{AssetCheckSpec(name, asset=evaluation_key).get_python_identifier(): Out(is_required=False)
                for name in GATES}},
        required_resource_keys={"database", "model_store", "tracking"},
        description="Trades the folds' out-of-sample probabilities under every candidate policy, backtests the "
                    "champion on the same bars, evaluates every gate and records them.")
    def judge_challenger(context: OpExecutionContext, plan: EvaluationPlan, folds: list[FoldResult]):
        db = context.resources.database.database()
        client = context.resources.tracking.client()
        version, walk_config = plan.version, plan.walk_config
        champion = _champion(version, walk_config.policy.half_threshold, line.name)
        context.log.info(f"{line.name}/{version} against champion "
                         f"{champion.version if isinstance(champion, ChampionModel) else champion or 'none'}")
        evaluation = checked(lambda: judge_walk_forward(
            plan.data, plan.bars, CATALOGUE, assemble(plan.data, folds), walk_config, plan.gate_config,
            latency_ms=plan.latency_ms, champion=champion, trial_history=trial_sharpes(db, name=line.name)))
        record_trials(db, version, evaluation.trial_sharpes, len(evaluation.challenger.returns), context.run.run_id,
                      name=line.name)

        gates = [gate.as_dict() for gate in evaluation.gates]
        metrics = evaluation.challenger.metrics()
        rival = evaluation.champion.result.metrics() if evaluation.champion and evaluation.champion.result else None
        folder = context.resources.model_store.directory("evaluations", f"{line.name}-v{version}-{context.run.run_id}")
        folder.mkdir(parents=True, exist_ok=True)
        tried = {f"lora threshold={t}": r.returns for t, r in evaluation.candidates.items()} | {
            f"lightgbm threshold={t}": r.returns for t, r in evaluation.baseline_candidates.items()}
        returns = pd.DataFrame(tried, index=pd.DatetimeIndex(evaluation.challenger.ts, name="ts"))
        if evaluation.champion and evaluation.champion.result:
            returns["champion"] = evaluation.champion.result.returns
        returns.to_parquet(folder / "returns.parquet")
        (folder / "gates.json").write_text(json.dumps({"version": version, "selected_threshold":
                                                       evaluation.selected_threshold, "gates": gates}, default=str,
                                                      indent=1))
        chart = equity_chart(evaluation.challenger, folder / "equity.png",
                             f"{line.name}/{version} walk-forward (threshold {evaluation.selected_threshold})",
                             evaluation.champion.result if evaluation.champion else None)
        _log_to_training_run(client, plan.mlflow_run_id, evaluation, metrics, folder)

        verdict = judge(gates, GATES)
        if not verdict.passed:
            context.log.warning(f"{line.name}/{version} fails its gates ({verdict.reason}); champion will refuse it")

        yield Output(None, "result", metadata={
            "model_version": f"{line.name}/{version}",
            "version": version,
            "verdict": "passed" if verdict.passed else "refused",
            "failed_gates": ", ".join(verdict.failed) or "none",
            "selected_threshold": evaluation.selected_threshold,
            "risk_terms": MetadataValue.json(asdict(RiskTerms.of(walk_config.policy,
                                                                 one_spec(walk_config.instrument)))),
            "equity": MetadataValue.md(_equity_inline(evaluation)),
            "gates": MetadataValue.md(gate_markdown(gates)),
            "backtest": MetadataValue.md(_backtest_markdown(metrics, rival, evaluation)),
            "equity_chart": MetadataValue.md(image_markdown(chart)),
            "folds": MetadataValue.json(plain(evaluation.walk.folds)),
            "returns_path": MetadataValue.path(str(folder / "returns.parquet")),
            # JSON has no NaN: an undefined figure is null, and undefined_metrics says why
            "gate_results": MetadataValue.json(plain(gates)),
            "metrics": MetadataValue.json(plain(metrics)),
            "undefined_metrics": MetadataValue.json(undefined_metrics(metrics)),
            **({"champion_metrics": MetadataValue.json(plain(rival))} if rival else {}),
        })
        for gate in evaluation.gates:
            yield AssetCheckResult(check_name=gate.name, passed=gate.passed,
                                   severity=AssetCheckSeverity.WARN,  # a refused challenger, not broken data
                                   description=("pass: " if gate.passed else "FAIL: ") + gate.reason,
                                   metadata={"statistic": number_or_reason(gate.statistic, "undefined: see reason"),
                                             "threshold": gate.threshold,
                                             "reason": gate.reason})

    @graph_asset(
        name="challenger_evaluation",
        key_prefix=line.key_prefix or None,
        ins={"lora_model": AssetIn(key=AssetKey([*line.key_prefix, "lora_model"]), dagster_type=Nothing)},
        # not Dagster-blocking (that would fail the run): `champion` is what blocks the alias on them
        check_specs=[AssetCheckSpec(name, asset=evaluation_key, description=text)
                     for name, text in GATE_DESCRIPTIONS.items()],
        # the launchpad and run configs keep one config block for the asset: PromotionConfig, given to the first step
        config=ConfigMapping(config_fn=lambda config: {step("plan_evaluation"): {"config": config}},
                             config_schema=PromotionConfig.to_config_schema()),
        group_name="promotion",
        kinds={"pytorch", "mlflow"},
        description="Walk-forward backtest of the challenger with costs, retrained per fold (one step per fold, spread "
                    "over workers by the Celery executor); every gate an asset check that champion "
                    "requires to pass.",
    )
    def challenger_evaluation(lora_model):
        plan, folds = plan_evaluation(lora_model)
        return judge_challenger(plan, folds.map(lambda number: evaluate_fold(plan, number)).collect())

    @asset(
        key=champion_key,
        deps=[challenger_evaluation],
        required_resource_keys={"database", "tracking"},
        group_name="promotion",
        kinds={"mlflow"},
        output_required=False,
        description="Decides on the evaluated challenger: when every gate passed, moves the registry alias 'champion' "
                    "to it (old champion → 'previous') or puts it in shadow first (shadow_hours); otherwise records "
                    "the refusal and does not materialize, so the alias stays and no Bento is built.",
    )
    def champion(context: AssetExecutionContext, config: ChampionConfig):
        db = context.resources.database.database()
        context.resources.tracking.client()
        event = context.instance.get_latest_materialization_event(evaluation_key)
        if event is None or event.asset_materialization is None:
            raise Failure(description=f"no {evaluation_key.to_user_string()} to act on: materialize it first")
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        version, gates = meta["version"], meta["gate_results"]
        verdict = judge(gates, GATES)  # the gates block the alias here: nothing moves unless every one passed
        if not verdict.passed:
            yield from _refuse(context, db, version, verdict, gates, meta, line.name, champion_key)
            return
        name, current = line.name, alias_version(CHAMPION, name=line.name)
        terms = dict(entry_threshold=meta["selected_threshold"], gates=gates, metrics={"challenger": meta["metrics"]},
                     dagster_run_id=context.run.run_id, risk=_risk_terms(meta), name=name)
        share = config.ab_share if config.ab_share is not None else SafetySettings.from_env().ab_share
        hours = config.shadow_hours if config.shadow_hours is not None else MonitoringSettings.from_env().shadow_hours
        if (share > 0 or hours > 0) and not line.main:
            # the live reviews (shadow_review, ab_review and their sensors) follow the main line only
            context.log.warning(f"{name}: shadow and A/B periods are reviewed on the main line only; this line "
                                "promotes on its gates")
            share = hours = 0
        if share > 0 and current not in (None, version):
            start_ab_test(db, version, share, "all gates passed; A/B test against the champion", **terms)
            context.log.info(f"{name}/{version} answers {share:.0%} of requests in an A/B test (champion unchanged)")
            yield MaterializeResult(metadata={"decision": "ab_test", "champion": f"{name}/{current}",
                                              "challenger": f"{name}/{version}", "ab_share": share})
            return
        if hours > 0 and current not in (None, version):
            until = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=hours)
            start_shadow(db, version, f"all gates passed; in shadow for {hours:g} h", until=until, **terms)
            context.log.info(f"{name}/{version} serves in shadow until {until} (champion unchanged)")
            yield MaterializeResult(metadata={"decision": "shadow", "champion": f"{name}/{current}",
                                              "shadow": f"{name}/{version}", "shadow_until": until.isoformat()})
            return
        before = promote(db, version, verdict.reason, **terms)
        context.log.info(f"{name}/{version} is champion (previous: {before or 'none'})")
        yield MaterializeResult(metadata={"decision": "promoted", "champion": f"{name}/{version}",
                                          "previous": before or "none", "entry_threshold": meta["selected_threshold"]})

    return challenger_evaluation, champion


challenger_evaluation, champion = promotion_assets(MAIN_LINE)
