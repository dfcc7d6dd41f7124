"""The Dagster code location: everything the UI, the daemon and ``smc demo`` run."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from sensors.file_drop import build_file_drop_sensor
from smc_assets.bars import bars
from smc_assets.features import features
from smc_assets.labels import labels
from smc_assets.partitions import BAR_PARTITIONS
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.settings import Settings

market_data_job = define_asset_job(
    "market_data_job",
    selection=AssetSelection.assets(bars, features, labels),
    partitions_def=BAR_PARTITIONS,
    description="One symbol × trading day: load and check bars, then compute features and labels.",
)


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    return Definitions(
        assets=[bars, features, labels],
        jobs=[market_data_job],
        sensors=[build_file_drop_sensor(market_data_job.name)],
        resources={
            "database": DatabaseResource(url=settings.database_url),
            "landing": LandingResource(path=str(settings.landing_dir), timezone=settings.exchange_tz),
        },
    )


defs = build_definitions()
