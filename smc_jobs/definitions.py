"""The Dagster code location: everything the UI, the daemon and ``smc demo`` run."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from sensors.file_drop import build_file_drop_sensor
from smc_assets.bars import bars
from smc_assets.partitions import BAR_PARTITIONS
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.settings import Settings

bars_job = define_asset_job(
    "bars_job",
    selection=AssetSelection.assets(bars),
    partitions_def=BAR_PARTITIONS,
    description="Load one symbol × trading day of bars from the landing folder and check them.",
)


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    return Definitions(
        assets=[bars],
        jobs=[bars_job],
        sensors=[build_file_drop_sensor(bars_job.name)],
        resources={
            "database": DatabaseResource(url=settings.database_url),
            "landing": LandingResource(path=str(settings.landing_dir), timezone=settings.exchange_tz),
        },
    )


defs = build_definitions()
