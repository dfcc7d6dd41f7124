"""Promotion: ``challenger_evaluation`` (walk-forward backtest with costs; every statistical
gate a blocking asset check) and ``champion`` (moves the registry alias), plus rollback.

A failing gate blocks ``champion`` in the same run, so a model that has not proven itself
out of sample never reaches the alias the service follows. Every decision is recorded in
``model_promotions`` with its statistics and this Dagster run's id.
"""

import json
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from dagster import (AssetCheckResult, AssetCheckSpec, AssetExecutionContext, AssetKey, Config, Failure,
                     MaterializeResult, MetadataValue, OpExecutionContext, asset, op)
from pydantic import Field

from smc_assets.common import checked, image_markdown
from smc_assets.model import LoraModelConfig, lora_model
from smc_core.dataset import load_training_data
from smc_core.evaluation.backtest import InstrumentSpec, equity_chart
from smc_core.evaluation.gates import GateConfig
from smc_core.evaluation.walk_forward import ChampionModel, WalkForwardConfig, evaluate_challenger
from smc_core.features import CATALOGUE
from smc_core.model import Predictor, TrainConfig, load_package
from smc_core.model.package import package_horizon
from smc_core.model.pipeline import BaseConfig
from smc_core.policy import PolicyConfig
from smc_core.monitoring import MonitoringSettings, prediction_times
from smc_core.outcomes import live_summary, resolve_outcomes
from smc_core.promotion import (CHALLENGER, CHAMPION, end_shadow, entry_threshold_of, promote, record_trials, refuse,
                                rollback, shadow_state, shadow_verdict, start_shadow, trial_sharpes)
from smc_core.registry import MODEL_NAME, alias_version, package_path
from smc_core.risk import RiskTerms
from smc_core.store import load_bars, read_features

GATES = ("deflated_sharpe", "pbo", "spa", "versus_champion", "calibration", "latency")
GATE_DESCRIPTIONS = {
    "deflated_sharpe": "Deflated Sharpe Ratio above its threshold, trials counted from the whole history.",
    "pbo": "Probability of Backtest Overfitting (CSCV, 16 blocks) across the candidate policies at most its threshold.",
    "spa": "Hansen's SPA consistent p-value against flat (and the champion) below its threshold.",
    "versus_champion": "Sharpe at least 0.1 above the champion's, max drawdown no more than 2 points worse.",
    "calibration": "Validation ECE after calibration within budget.",
    "latency": "Single-window inference p50 within budget.",
}
EVALUATION_KEY = AssetKey("challenger_evaluation")


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
    tick_size: float = _INSTRUMENT.tick_size
    tick_value: float = _INSTRUMENT.tick_value
    commission: float = Field(default=_INSTRUMENT.commission, description="Dollars per contract per fill.")
    slippage_ticks: float = _INSTRUMENT.slippage_ticks
    capital: float = _INSTRUMENT.capital
    min_dsr: float = _GATES.min_dsr
    max_pbo: float = _GATES.max_pbo
    max_spa_pvalue: float = _GATES.max_spa_pvalue
    min_sharpe_improvement: float = _GATES.min_sharpe_improvement
    max_drawdown_worsening: float = _GATES.max_drawdown_worsening
    max_ece: float = _GATES.max_ece
    max_latency_ms: float = _GATES.max_latency_ms
    min_trades: int = _GATES.min_trades

    def walk_forward(self) -> WalkForwardConfig:
        policy = PolicyConfig(full_threshold=max(self.full_threshold, min(self.candidate_thresholds)),
                              half_threshold=min(self.candidate_thresholds), contracts=self.contracts,
                              stop_atr=self.stop_atr, target_atr=self.target_atr)
        instrument = InstrumentSpec(**_matching(self, InstrumentSpec))
        return WalkForwardConfig(folds=self.folds, min_train_fraction=self.min_train_fraction,
                                 embargo=pd.Timedelta(minutes=self.embargo_minutes),
                                 candidate_thresholds=tuple(self.candidate_thresholds), policy=policy,
                                 instrument=instrument)

    def gates(self) -> GateConfig:
        return GateConfig(**_matching(self, GateConfig))


def _matching(config: Config, target) -> dict:
    """The config's values for the fields ``target`` (a dataclass) shares with it."""
    names = set(type(config).model_fields)
    return {f.name: getattr(config, f.name) for f in dataclass_fields(target) if f.name in names}


@asset(
    deps=[lora_model],
    required_resource_keys={"database", "landing", "model_store", "tracking"},
    check_specs=[AssetCheckSpec(name, asset="challenger_evaluation", blocking=True, description=text)
                 for name, text in GATE_DESCRIPTIONS.items()],
    group_name="promotion",
    kinds={"pytorch", "mlflow"},
    description="Walk-forward backtest of the challenger with costs, retrained per fold; every gate a blocking check.",
)
def challenger_evaluation(context: AssetExecutionContext, config: PromotionConfig) -> MaterializeResult:
    db = context.resources.database.database()
    client = context.resources.tracking.client()
    version = alias_version(CHALLENGER)
    if version is None:
        raise Failure(description="no model version has the alias 'challenger': materialize lora_model first")
    package = checked(lambda: load_package(package_path(version)))
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
    walk_config, gate_config = config.walk_forward(), config.gates()
    base_config = BaseConfig(backbone=package.backbone_config, checkpoint=lineage["base"].get("checkpoint"),
                             sequence_length=training.sequence_length,
                             train=TrainConfig(epochs=0 if lineage["base"].get("checkpoint") else config.base_epochs,
                                               patience=2, seed=training.seed, threads=training.threads))
    training_run = client.get_run(lineage["mlflow_run_id"])
    ece = training_run.data.metrics.get("ece_after", float("nan"))
    latency = Predictor(package).single_window_latency_ms()
    champion = _champion(version, walk_config.policy.half_threshold)
    context.log.info(f"evaluating {MODEL_NAME}/{version}: {len(data)} windows, {config.folds} walk-forward folds, "
                     f"champion {champion.version if isinstance(champion, ChampionModel) else champion or 'none'}")

    def progress(event: dict) -> None:
        if "epoch" in event:
            context.log.info(f"{event['stage']} epoch {event['epoch']}: valid loss {event['valid_loss']:.4f}")

    evaluation = checked(lambda: evaluate_challenger(
        data, bars, CATALOGUE, base_config, training.run_config(), walk_config, gate_config, ece=ece,
        latency_ms=latency, champion=champion, trial_history=trial_sharpes(db), progress=progress))
    record_trials(db, version, evaluation.trial_sharpes, len(evaluation.challenger.returns), context.run.run_id)

    gates = [gate.as_dict() for gate in evaluation.gates]
    metrics = evaluation.challenger.metrics()
    rival = evaluation.champion.result.metrics() if evaluation.champion and evaluation.champion.result else None
    folder = context.resources.model_store.directory("evaluations", f"{MODEL_NAME}-v{version}-{context.run.run_id}")
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
                         f"{MODEL_NAME}/{version} walk-forward (threshold {evaluation.selected_threshold})",
                         evaluation.champion.result if evaluation.champion else None)
    _log_to_training_run(client, lineage["mlflow_run_id"], evaluation, metrics, folder)

    if not evaluation.passed:
        failed = [g.name for g in evaluation.gates if not g.passed]
        refuse(db, version, "failed gates: " + ", ".join(failed), gates=gates,
               metrics={"challenger": metrics, "champion": rival}, dagster_run_id=context.run.run_id)
        context.log.warning(f"{MODEL_NAME}/{version} refused: " + "; ".join(
            f"{g.name}: {g.reason}" for g in evaluation.gates if not g.passed))

    return MaterializeResult(
        metadata={
            "model_version": f"{MODEL_NAME}/{version}",
            "version": version,
            "verdict": "passed" if evaluation.passed else "refused",
            "selected_threshold": evaluation.selected_threshold,
            "risk_terms": MetadataValue.json(asdict(RiskTerms.of(walk_config.policy, walk_config.instrument))),
            "gates": MetadataValue.md(gate_markdown(gates)),
            "backtest": MetadataValue.md(_backtest_markdown(metrics, rival, evaluation)),
            "equity": MetadataValue.md(image_markdown(chart)),
            "folds": MetadataValue.json(evaluation.walk.folds),
            "returns_path": MetadataValue.path(str(folder / "returns.parquet")),
            "gate_results": MetadataValue.json(gates),
            "metrics": MetadataValue.json(metrics),
        },
        check_results=[
            AssetCheckResult(check_name=gate.name, passed=gate.passed,
                             metadata={"statistic": _number(gate.statistic), "threshold": gate.threshold,
                                       "reason": gate.reason})
            for gate in evaluation.gates
        ],
    )


def _risk_terms(evaluation_metadata: dict) -> RiskTerms | None:
    """The stop/target terms the challenger was evaluated with (absent on evaluations made before they were kept)."""
    terms = evaluation_metadata.get("risk_terms")
    return RiskTerms(**terms) if terms else None


class ChampionConfig(Config):
    shadow_hours: Optional[float] = Field(
        default=None, description="Serve a gated challenger in shadow this long before promoting it on its live "
                                  "record; 0 promotes at once. Empty: SMC_SHADOW_HOURS (default 0).")


@asset(
    deps=[challenger_evaluation],
    required_resource_keys={"database", "tracking"},
    group_name="promotion",
    kinds={"mlflow"},
    description="Moves the registry alias 'champion' to the evaluated challenger (old champion → 'previous'), or "
                "puts it in shadow first (shadow_hours); runs only when every gate passed.",
)
def champion(context: AssetExecutionContext, config: ChampionConfig) -> MaterializeResult:
    db = context.resources.database.database()
    context.resources.tracking.client()
    event = context.instance.get_latest_materialization_event(EVALUATION_KEY)
    if event is None or event.asset_materialization is None:
        raise Failure(description="no challenger_evaluation to act on: materialize it first")
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    if meta["verdict"] != "passed":
        raise Failure(description=f"{meta['model_version']} did not pass its gates; nothing is promoted")
    version = meta["version"]
    hours = config.shadow_hours if config.shadow_hours is not None else MonitoringSettings.from_env().shadow_hours
    if hours > 0 and alias_version(CHAMPION) not in (None, version):
        until = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=hours)
        start_shadow(db, version, f"all gates passed; in shadow for {hours:g} h", until=until,
                     entry_threshold=meta["selected_threshold"], gates=meta["gate_results"],
                     metrics={"challenger": meta["metrics"]}, dagster_run_id=context.run.run_id,
                     risk=_risk_terms(meta))
        context.log.info(f"{MODEL_NAME}/{version} serves in shadow until {until} (champion unchanged)")
        return MaterializeResult(metadata={"champion": f"{MODEL_NAME}/{alias_version(CHAMPION)}",
                                           "shadow": f"{MODEL_NAME}/{version}", "shadow_until": until.isoformat()})
    before = promote(db, version, "all gates passed", entry_threshold=meta["selected_threshold"],
                     gates=meta["gate_results"], metrics={"challenger": meta["metrics"]},
                     dagster_run_id=context.run.run_id, risk=_risk_terms(meta))
    context.log.info(f"{MODEL_NAME}/{version} is champion (previous: {before or 'none'})")
    return MaterializeResult(metadata={"champion": f"{MODEL_NAME}/{version}", "previous": before or "none",
                                       "entry_threshold": meta["selected_threshold"]})


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


@op(required_resource_keys={"database", "tracking"},
    description="Move 'champion' back to 'previous'; the service follows the alias within seconds.")
def rollback_champion(context: OpExecutionContext) -> None:
    context.resources.tracking.client()
    rolled_back, restored = checked(lambda: rollback(context.resources.database.database(),
                                                      dagster_run_id=context.run.run_id))
    context.log.info(f"champion rolled back from {MODEL_NAME}/{rolled_back} to {MODEL_NAME}/{restored}")


def gate_markdown(gates: list[dict]) -> str:
    lines = ["| gate | verdict | statistic | threshold | reason |", "|---|---|---|---|---|"]
    for gate in gates:
        statistic = gate["statistic"]
        shown = "–" if statistic is None or statistic != statistic else f"{statistic:.4f}"
        lines.append(f"| {gate['name']} | {'pass' if gate['passed'] else 'FAIL'} | {shown} | {gate['threshold']} | "
                     f"{gate['reason']} |")
    return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------

def _champion(challenger: str, default_threshold: float):
    """The champion to compare with: None (first model), a ChampionModel, or why it cannot be used."""
    version = alias_version(CHAMPION)
    if version is None or version == challenger:
        return None
    try:
        package = load_package(package_path(version))
    except Exception as error:  # a missing or broken package must fail the gates, not the run
        return f"champion {version}: its package cannot be loaded ({error})"
    threshold = entry_threshold_of(version)
    return ChampionModel(version, package.model, package.spec, package.temperature,
                         threshold if threshold is not None else default_threshold)


def _traded_bars(context, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Bars with the ATR feature and the trading-day session number the backtest needs."""
    db = context.resources.database.database()
    bars = load_bars(db, symbol, timeframe, start, end)
    atr = read_features(db, symbol, timeframe, start, end, CATALOGUE)["atr"]
    bars = bars.assign(atr=atr.reindex(pd.DatetimeIndex(bars["ts"])).to_numpy())
    days = context.resources.landing.calendar().trading_day_of(bars["ts"])
    return bars.assign(session=days.astype("int64"))


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
    for key, value in metrics.items():
        row = f"| {key} | {value:.4f} |" + (f" {rival[key]:.4f} |" if rival else "")
        lines.append(row)
    lines.append("")
    for name, candidates in (("challenger", evaluation.candidates), ("LightGBM", evaluation.baseline_candidates)):
        lines.append(f"{name} by entry threshold (annualised Sharpe, trades): " + ", ".join(
            f"{t}: {r.metrics()['sharpe']:.2f}, {len(r.trades)}" for t, r in candidates.items()))
        lines.append("")
    return "\n".join(lines)


def _number(value) -> float:
    return float(value) if value is not None and np.isfinite(value) else float("nan")
