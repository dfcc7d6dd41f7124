"""The Dagster code location: everything the UI, the daemon and ``smc demo`` run."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, job
from dagster_mlflow import end_mlflow_on_run_finished

from sensors.file_drop import build_file_drop_sensor
from smc_assets.bars import bars
from smc_assets.features import features
from smc_assets.labels import labels
from smc_assets.model import base_model, lora_model
from smc_assets.partitions import BAR_PARTITIONS
from smc_assets.promotion import challenger_evaluation, champion, rollback_champion
from smc_assets.resources import (DatabaseResource, LandingResource, ModelStoreResource, TrackingResource,
                                  mlflow_resource)
from smc_assets.serving import bento_artifact
from smc_core.registry import TrackingConfig
from smc_core.settings import Settings

market_data_job = define_asset_job(
    "market_data_job",
    selection=AssetSelection.assets(bars, features, labels),
    partitions_def=BAR_PARTITIONS,
    description="One symbol × trading day: load and check bars, then compute features and labels.",
)

# One asset per job: dagster-mlflow's hook ends the MLflow run after the job's last step,
# so each training stage gets its own MLflow run, tagged with its Dagster run id.
base_model_job = define_asset_job(
    "base_model_job", selection=AssetSelection.assets(base_model), hooks={end_mlflow_on_run_finished},
    description="Pretrain the backbone on all stored bars (rarely: monthly, or after a feature-set change).",
)
train_job = define_asset_job(
    "train_job", selection=AssetSelection.assets(lora_model), hooks={end_mlflow_on_run_finished},
    description="Fine-tune a LoRA adapter on the current base, calibrate, compare with baselines, register as challenger.",
)

promotion_job = define_asset_job(
    "promotion_job", selection=AssetSelection.assets(challenger_evaluation, champion, bento_artifact),
    description="Walk-forward backtest of the challenger, every gate a blocking check; on a pass the champion alias "
                "moves and the Bento is built.",
)


@job(description="Move the 'champion' alias back to 'previous' (the service follows within seconds).")
def rollback_job():
    rollback_champion()


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    tracking = TrackingConfig.from_settings(settings)
    return Definitions(
        assets=[bars, features, labels, base_model, lora_model, challenger_evaluation, champion, bento_artifact],
        jobs=[market_data_job, base_model_job, train_job, promotion_job, rollback_job],
        sensors=[build_file_drop_sensor(market_data_job.name)],
        resources={
            "database": DatabaseResource(url=settings.database_url),
            "landing": LandingResource(path=str(settings.landing_dir), timezone=settings.exchange_tz),
            "model_store": ModelStoreResource(root=str(settings.smc_home / "models")),
            "mlflow": mlflow_resource(tracking),
            "tracking": TrackingResource(tracking_uri=tracking.tracking_uri, artifact_root=tracking.artifact_root),
        },
    )


defs = build_definitions()
