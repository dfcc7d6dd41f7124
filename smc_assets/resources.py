"""Dagster resources wrapping the framework-free pieces of ``smc_core``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, ResourceDefinition
from dagster_mlflow import mlflow_tracking
from pydantic import Field

from smc_core.calendar import SessionCalendar
from smc_core.errors import ConfigError
from smc_core.instruments import Instrument, instrument
from smc_core.db import Database, shared_database
from smc_core.migrations import migrate
from smc_core.registry import TrackingConfig, configure
from smc_core.settings import OUT_OF_SESSION_CHOICES, Settings, resampled_timeframes
from smc_core.timeframe import parse_timeframe

_migrated: set[str] = set()


class DatabaseResource(ConfigurableResource):
    """The market-data database; migrations are applied once per process on first use."""

    url: Optional[str] = Field(
        default=None, description="PostgreSQL URL; empty means DATABASE_URL, else the embedded server under SMC_HOME.")

    def database(self) -> Database:
        db = shared_database(self.url)
        if db.url not in _migrated:
            migrate(db)
            _migrated.add(db.url)
        return db


_SETTINGS = Settings.from_env()


class LandingResource(ConfigurableResource):
    """The folder NinjaTrader exports and other bar files are dropped into, and how bars are read.

    Every field has a default from the settings, so a run config may set only the one that
    differs (``timeframe: 1h``); the instrument file gives each symbol's calendar and zone.
    """

    path: str = Field(default=str(_SETTINGS.landing_dir), description="Landing folder (absolute path; SMC_LANDING_DIR).")
    timeframe: str = Field(default=_SETTINGS.timeframe, description="Bar timeframe of the data (SMC_TIMEFRAME).")
    resampled: Optional[str] = Field(
        default=_SETTINGS.resampled,
        description="Higher timeframes (5m, 15m, 1h, comma-separated) that features and labels are also computed "
                    "for, from the database's resampling of the 1-minute bars (SMC_RESAMPLED); empty: none; unset: "
                    "5m on 1-minute data, none otherwise.")
    timezone: Optional[str] = Field(
        default=None, description="Zone of naive timestamps in files; empty: each symbol's, from the instruments file.")
    skip_invalid: bool = Field(
        default=False, description="Write the valid rows of files with rejected rows (recorded in ingest_rejects).")
    max_missing_ratio: float = Field(
        default=0.05, description="Share of expected session bars that may be missing before the coverage check warns.")
    out_of_session: str = Field(
        default=_SETTINGS.out_of_session,
        description="Bars outside every session: exclude (counted, no features or labels), include (they join the "
                    "session they lead into) or fail (SMC_OUT_OF_SESSION).")

    @property
    def folder(self) -> Path:
        return Path(self.path)

    def instrument(self, symbol: str) -> Instrument:
        return instrument(symbol)

    def calendar(self, symbol: str) -> SessionCalendar:
        return instrument(symbol).calendar()

    def zone(self, symbol: str) -> str:
        """Zone of naive timestamps in ``symbol``'s files."""
        return self.timezone or instrument(symbol).zone

    @property
    def include_outside(self) -> bool:
        if self.out_of_session not in OUT_OF_SESSION_CHOICES:
            raise ConfigError(f"landing.out_of_session={self.out_of_session!r} is not one of "
                              f"{', '.join(OUT_OF_SESSION_CHOICES)}")
        return self.out_of_session == "include"

    def width(self):
        return parse_timeframe(self.timeframe)

    @property
    def timeframes(self) -> list[tuple[str, bool]]:
        """Every timeframe the lineage computes, with whether the database resamples it: the
        base timeframe of the data first, then the resampled ones."""
        resampled = resampled_timeframes(self.timeframe, self.resampled, "landing.resampled")
        return [(self.timeframe, False), *((timeframe, True) for timeframe in resampled)]


class ModelStoreResource(ConfigurableResource):
    """Where trained bases and model packages are written (MLflow holds copies of the packages)."""

    root: str = Field(description="Folder for base models and model packages (absolute path).")

    def directory(self, *parts: str) -> Path:
        path = Path(self.root).joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


class TrackingResource(ConfigurableResource):
    """MLflow tracking and registry for steps that work on existing runs and versions
    (evaluation, promotion, rollback) rather than opening a run of their own."""

    tracking_uri: str = Field(description="MLflow tracking URI (registry included).")
    artifact_root: str = Field(description="Absolute artifact root for the experiment (a file:// URI).")

    def config(self) -> TrackingConfig:
        return TrackingConfig(self.tracking_uri, self.artifact_root)

    def client(self):
        import mlflow

        configure(self.config())
        return mlflow.MlflowClient()


def mlflow_resource(config: TrackingConfig) -> ResourceDefinition:
    """dagster-mlflow's ``mlflow_tracking`` resource, preceded by our experiment setup.

    ``mlflow_tracking`` calls ``mlflow.set_experiment``, which would create the experiment
    with an artifact root relative to the current directory (DESIGN §3); creating it first
    with the absolute root under SMC_HOME keeps every run's artifacts in one place.
    """

    def start(context):
        configure(config)
        return mlflow_tracking.resource_fn(context)

    definition = ResourceDefinition(resource_fn=start, config_schema=mlflow_tracking.config_schema,
                                    description="MLflow run per Dagster run (dagster-mlflow), artifacts under SMC_HOME.")
    return definition.configured({"experiment_name": config.experiment, "mlflow_tracking_uri": config.tracking_uri})
