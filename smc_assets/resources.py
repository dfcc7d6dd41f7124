"""Dagster resources wrapping the framework-free pieces of ``smc_core``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from smc_core.calendar import SessionCalendar
from smc_core.db import Database, shared_database
from smc_core.migrations import migrate
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


class LandingResource(ConfigurableResource):
    """The folder NinjaTrader exports and other bar files are dropped into."""

    path: str = Field(description="Landing folder (absolute path).")
    timeframe: str = Field(default="1m", description="Bar timeframe of the files in this folder.")
    timezone: str = Field(default="America/Chicago", description="Exchange time zone of naive timestamps.")
    skip_invalid: bool = Field(
        default=False, description="Write the valid rows of files with rejected rows (recorded in ingest_rejects).")
    max_missing_ratio: float = Field(
        default=0.05, description="Share of expected session bars that may be missing before the coverage check warns.")

    @property
    def folder(self) -> Path:
        return Path(self.path)

    def calendar(self) -> SessionCalendar:
        return SessionCalendar(tz=self.timezone)

    def width(self):
        return parse_timeframe(self.timeframe)
