"""The Dagster code location: everything the UI, the daemon and ``smc demo`` run."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from dagster import AssetSelection, AssetsDefinition, Definitions, define_asset_job, job
from dagster_mlflow import end_mlflow_on_run_finished

from sensors.drift import build_drift_sensor
from sensors.file_drop import build_file_drop_sensor
from sensors.live_bars import build_live_bars_sensor
from sensors.performance import build_performance_sensor, build_skip_rate_sensor
from sensors.retrain import (SHADOW_REVIEW_JOB, build_retrain_chain_sensor, build_shadow_sensor, default_status,
                             retrain_job_name)
from sensors.run_failure import build_run_failure_sensor
from sensors.safety import AB_REVIEW_JOB, build_ab_test_sensor, build_circuit_breaker_sensor
from smc_assets.bars import bars
from smc_assets.features import features
from smc_assets.labels import labels
from smc_assets.model import base_model, lora_model, model_assets
from smc_assets.monitoring import drift_report, drift_report_asset, outcomes, reports_dir
from smc_assets.partitions import BAR_PARTITIONS
from smc_assets.promotion import challenger_evaluation, champion, promotion_assets, rollback_champion, shadow_review
from smc_assets.safety import ab_review, halt_trading, resume_trading
from smc_assets.resources import (DatabaseResource, LandingResource, ModelStoreResource, TrackingResource,
                                  mlflow_resource)
from smc_assets.serving import bento_artifact, bento_asset
from smc_core.execution import ExecutionSettings
from smc_core.lines import MAIN_LINE, ModelLine
from smc_core.monitoring import MonitoringSettings
from smc_core.registry import TrackingConfig
from smc_core.safety import SafetySettings
from smc_core.settings import Settings
from smc_jobs.executors import build_executor, step_io_manager
from smc_jobs.schedules import build_schedules

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export its name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

market_data_job = define_asset_job(
    "market_data_job",
    selection=AssetSelection.assets(bars, features, labels),
    partitions_def=BAR_PARTITIONS,
    description="One symbol × trading day: load and check bars, then compute features and labels.",
)

class LineJobs(NamedTuple):
    base: UnresolvedAssetJobDefinition
    train: UnresolvedAssetJobDefinition
    promotion: UnresolvedAssetJobDefinition
    retrain: UnresolvedAssetJobDefinition


class LineAssets(NamedTuple):
    """An added model line's copies of the model-side assets (``smc_core.lines``)."""

    base: AssetsDefinition
    lora: AssetsDefinition
    evaluation: AssetsDefinition
    champion: AssetsDefinition
    bento: AssetsDefinition
    drift_report: AssetsDefinition


def line_jobs(line: ModelLine, base, lora, evaluation, decision, bento) -> LineJobs:
    """base_model_job, train_job, promotion_job and retrain_job of one model line (an added line's
    names end in its slug: train_job_5m_h15)."""
    of = "" if line.main else f" of line {line.name}"

    # One asset per job: dagster-mlflow's hook ends the MLflow run after the job's last step,
    # so each training stage gets its own MLflow run, tagged with its Dagster run id.
    base_job = define_asset_job(
        line.suffixed("base_model_job"), selection=AssetSelection.assets(base), hooks={end_mlflow_on_run_finished},
        description=f"Pretrain the backbone{of} on all stored bars (rarely: monthly, or after a feature-set change).")
    train = define_asset_job(
        line.suffixed("train_job"), selection=AssetSelection.assets(lora), hooks={end_mlflow_on_run_finished},
        description=f"Fine-tune a LoRA adapter{of} on the current base, calibrate, compare with baselines, register "
                    "as challenger.")
    promotion = define_asset_job(
        line.suffixed("promotion_job"), selection=AssetSelection.assets(evaluation, decision, bento),
        description=f"Walk-forward backtest of the challenger{of}, every gate a check; all passed: the champion alias "
                    "moves and the Bento is built; else the refusal is recorded and the run still succeeds.")
    # The loop: retrain_chain_sensor starts this once the newest partitions are reloaded. lora_model
    # opens the MLflow run (dagster-mlflow); the evaluation, gates and promotion of the same run
    # are logged onto the challenger's MLflow run by id, and the hook ends it after the last step.
    retrain = define_asset_job(
        retrain_job_name(line), selection=AssetSelection.assets(lora, evaluation, decision, bento),
        hooks={end_mlflow_on_run_finished},
        description=f"Fine-tune a new LoRA adapter{of} on the current base (newest trading days), evaluate, gate, "
                    "promote, rebuild the Bento; the running service follows the champion alias by itself.")
    return LineJobs(base_job, train, promotion, retrain)


def line_assets(line: ModelLine) -> LineAssets:
    return LineAssets(*model_assets(line), *promotion_assets(line), bento_asset(line), drift_report_asset(line))


base_model_job, train_job, promotion_job, retrain_job = line_jobs(
    MAIN_LINE, base_model, lora_model, challenger_evaluation, champion, bento_artifact)


shadow_review_job = define_asset_job(
    SHADOW_REVIEW_JOB, selection=AssetSelection.assets(shadow_review, bento_artifact),
    description="End a shadow period: promote or refuse the shadow on its live outcomes vs the champion, rebuild the "
                "Bento.",
)

def monitoring_job_for(drift_reports=()):
    """``monitoring_job``: outcomes and every model line's drift report (``drift_reports``: the added lines')."""
    return define_asset_job(
        "monitoring_job", selection=AssetSelection.assets(outcomes, drift_report, *drift_reports),
        description="Resolve live outcomes of logged predictions and write an Evidently drift report of each model "
                    "line's champion.")


monitoring_job = monitoring_job_for()


@job(description="Move the 'champion' alias back to 'previous' (the service follows within seconds); config model: "
                 "which line's registered model (default smc-lora).")
def rollback_job():
    rollback_champion()


@job(description="Halt trading for the symbols (or all): every answer is skip within HALT_POLL_SECONDS.")
def halt_job():
    halt_trading()


@job(description="Lift the halts of the symbols (or every halt).")
def resume_job():
    resume_trading()


ab_review_job = define_asset_job(
    AB_REVIEW_JOB, selection=AssetSelection.assets(ab_review, bento_artifact),
    description="End an A/B test: promote or refuse the challenger on its live trades vs the champion's (one-sided "
                "Welch t-test), rebuild the Bento.",
)


def build_definitions(settings: Settings | None = None, monitoring: MonitoringSettings | None = None,
                      safety: SafetySettings | None = None, execution: ExecutionSettings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    added = {line: line_assets(line) for line in settings.model_lines() if not line.main}
    added_jobs = {line: line_jobs(line, *assets[:5]) for line, assets in added.items()}  # all but the drift report
    monitoring = monitoring or MonitoringSettings.from_env()
    monitor = monitoring_job_for([assets.drift_report for assets in added.values()]) if added else monitoring_job
    model_root = str(settings.smc_home / "models")
    reports = reports_dir(model_root)
    line_sensors = [sensor for line in added for sensor in (
        build_drift_sensor(monitoring, reports, line), build_performance_sensor(monitoring, line),
        build_skip_rate_sensor(monitoring, line=line))]
    safety = safety or SafetySettings.from_env()
    execution = execution or ExecutionSettings.from_env()
    tracking = TrackingConfig.from_settings(settings)
    return Definitions(
        assets=[bars, features, labels, base_model, lora_model, challenger_evaluation, champion, bento_artifact,
                shadow_review, ab_review, outcomes, drift_report, *(a for assets in added.values() for a in assets)],
        jobs=[market_data_job, base_model_job, train_job, promotion_job, retrain_job, shadow_review_job, monitor,
              rollback_job, halt_job, resume_job, ab_review_job, *(j for jobs in added_jobs.values() for j in jobs)],
        schedules=build_schedules(monitoring, refresh_job=market_data_job, monitoring_job=monitor,
                                  base_model_jobs=[base_model_job, *(jobs.base for jobs in added_jobs.values())]),
        sensors=[build_file_drop_sensor(market_data_job.name, default_status=default_status(monitoring)),
                 build_live_bars_sensor(market_data_job.name, default_status=default_status(monitoring)),
                 build_drift_sensor(monitoring, reports),
                 build_performance_sensor(monitoring), build_skip_rate_sensor(monitoring),
                 build_retrain_chain_sensor(monitoring, settings.model_lines(),
                                            [retrain_job, *(jobs.retrain for jobs in added_jobs.values())] if added else None),
                 build_shadow_sensor(monitoring),
                 build_run_failure_sensor(monitoring),
                 build_circuit_breaker_sensor(safety), build_ab_test_sensor(safety, monitoring), *line_sensors],
        resources={
            "database": DatabaseResource(url=settings.database_url),
            "landing": LandingResource(path=str(settings.landing_dir), timeframe=settings.timeframe,
                                       out_of_session=settings.out_of_session),
            "model_store": ModelStoreResource(root=model_root),
            "mlflow": mlflow_resource(tracking),
            "tracking": TrackingResource(tracking_uri=tracking.tracking_uri, artifact_root=tracking.artifact_root),
            "io_manager": step_io_manager(settings.smc_home),
        },
        executor=build_executor(execution),
    )


defs = build_definitions()
