"""One settings object, read from the environment (DESIGN §7).

Paths are made absolute at load time: tools such as MLflow and Dagster resolve relative
paths against whatever directory they happen to run in, which silently splits state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from smc_core.calendar import zone
from smc_core.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    """PostgreSQL URL for market data; None means an embedded server under ``smc_home``."""
    smc_home: Path
    """Root of all local state (embedded database, landing folder, artifacts)."""
    landing_dir: Path
    """Folder watched for NinjaTrader / CSV / Parquet exports."""
    exchange_tz: str
    """Time zone of naive timestamps in input files (NinjaTrader exports local time)."""
    partition_start: date
    """First trading day offered as a Dagster partition."""
    log_level: str

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("SMC_HOME", "./.smc")).expanduser().resolve()
        tz = env.get("SMC_EXCHANGE_TZ", "America/Chicago")
        zone(tz)
        start_text = env.get("SMC_PARTITION_START", "2024-01-01")
        try:
            start = date.fromisoformat(start_text)
        except ValueError:
            raise ConfigError(f"SMC_PARTITION_START={start_text!r} is not a date (YYYY-MM-DD)") from None
        level = env.get("LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"LOG_LEVEL={level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        landing = Path(env.get("SMC_LANDING_DIR", str(home / "landing"))).expanduser().resolve()
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            smc_home=home,
            landing_dir=landing,
            exchange_tz=tz,
            partition_start=start,
            log_level=level,
        )


def env_number(env, name: str, default, kind, low, high):
    """``env[name]`` as ``kind`` within [low, high], ``default`` when unset; a ConfigError names the variable."""
    text = env.get(name)
    if text in (None, ""):
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a {kind.__name__}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside [{low}, {high}]")
    return value


def env_flag(env, name: str, default: bool = False) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={text!r} is not a switch: use on/off (or 1/0, true/false)")
