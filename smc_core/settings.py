"""One settings object, read from the environment (DESIGN §7).

Paths are made absolute at load time: tools such as MLflow and Dagster resolve relative
paths against whatever directory they happen to run in, which silently splits state.

``$SMC_HOME/settings.env`` (``NAME=value`` lines) holds values a tool chose for this home —
``smc demo`` writes the partition range of the data it loads there — so that every process
on the home sees them (the Dagster UI's code location too, which does not inherit the
demo's environment). The environment always wins over the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from smc_core.calendar import zone
from smc_core.errors import ConfigError
from smc_core.timeframe import RESAMPLED_FROM_1M, parse_timeframe


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
    partition_end: date | None
    """Last trading day offered as a Dagster partition; None: up to today."""
    log_level: str
    timeframe: str = "1m"
    """Bar timeframe of the data the assets, sensors and commands work on (SMC_TIMEFRAME)."""
    resampled: str | None = None
    """Higher timeframes (5m, 15m, 1h, comma-separated) the lineage also computes features and
    labels for, from the database's resampling of the 1-minute bars (SMC_RESAMPLED); None: the
    default of ``resampled_timeframes``."""
    lines: str | None = None
    """Model lines added to the main one (SMC_MODEL_LINES: ``5m``, ``15m:8``; see ``smc_core.lines``)."""
    instruments_file: Path | None = None
    """Your instrument specifications, merged over the built-in ones (SMC_INSTRUMENTS)."""
    out_of_session: str = "exclude"
    """What happens to a stored bar outside every session (SMC_OUT_OF_SESSION): ``exclude``
    (counted and shown by session_coverage, no features or labels), ``include`` (it joins the
    session it leads into) or ``fail`` (the bars partition fails, naming them)."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("SMC_HOME", "./.smc")).expanduser().resolve()
        env = {**read_home_settings(home), **env}
        tz = env.get("SMC_EXCHANGE_TZ", "America/Chicago")
        zone(tz)
        start = _date(env, "SMC_PARTITION_START", "2024-01-01")
        end = _date(env, "SMC_PARTITION_END", None)
        if end is not None and end < start:
            raise ConfigError(f"SMC_PARTITION_END={end} is before SMC_PARTITION_START={start}")
        level = env.get("LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"LOG_LEVEL={level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        landing = Path(env.get("SMC_LANDING_DIR", str(home / "landing"))).expanduser().resolve()
        timeframe = env.get("SMC_TIMEFRAME") or cls.timeframe
        parse_timeframe(timeframe)
        resampled = env.get("SMC_RESAMPLED")
        resampled_timeframes(timeframe, resampled, "SMC_RESAMPLED")
        lines = env.get("SMC_MODEL_LINES")
        _lines(timeframe, resampled, lines)
        out_of_session = (env.get("SMC_OUT_OF_SESSION") or cls.out_of_session).lower()
        if out_of_session not in OUT_OF_SESSION_CHOICES:
            raise ConfigError(f"SMC_OUT_OF_SESSION={out_of_session!r} is not one of {', '.join(OUT_OF_SESSION_CHOICES)}")
        return cls(
            database_url=secret(env, "DATABASE_URL"),
            smc_home=home,
            landing_dir=landing,
            exchange_tz=tz,
            partition_start=start,
            partition_end=end,
            log_level=level,
            timeframe=timeframe,
            resampled=resampled,
            lines=lines,
            instruments_file=Path(env.get("SMC_INSTRUMENTS") or home / "instruments.toml").expanduser().resolve(),
            out_of_session=out_of_session,
        )


    def model_lines(self):
        """The main model line and those SMC_MODEL_LINES adds (``smc_core.lines.ModelLine``)."""
        return _lines(self.timeframe, self.resampled, self.lines)


def _lines(base: str, resampled: str | None, value: str | None):
    from smc_core.lines import model_lines  # lines name registered models: the registry imports these settings

    return model_lines(base, resampled, value)


OUT_OF_SESSION_CHOICES = ("exclude", "include", "fail")


def resampled_timeframes(base: str, value: str | None, name: str) -> tuple[str, ...]:
    """The resampled timeframes of ``value`` (a comma list; None: the default, 5m on 1-minute data
    and none otherwise), checked: the database resamples 1-minute bars only."""
    if value is None:
        return ("5m",) if base == "1m" else ()
    chosen = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [v for v in chosen if v not in RESAMPLED_FROM_1M]
    if unknown:
        raise ConfigError(f"{name}={','.join(chosen)}: {', '.join(unknown)} cannot be resampled; the database "
                          f"resamples 1-minute bars to {', '.join(RESAMPLED_FROM_1M)}")
    if chosen and base != "1m":
        raise ConfigError(f"{name}={','.join(chosen)} needs 1-minute bars, but the base timeframe is {base}: "
                          f"set {name}= (empty) or SMC_TIMEFRAME=1m")
    return chosen

HOME_SETTINGS = "settings.env"


def read_home_settings(home: Path) -> dict[str, str]:
    """``NAME=value`` lines of ``$SMC_HOME/settings.env`` (``#`` comments, blank lines allowed)."""
    path = home / HOME_SETTINGS
    if not path.exists():
        return {}
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{path}:{number}: expected NAME=value, got {line!r}")
        values[name.strip()] = value.strip()
    return values


def write_home_settings(home: Path, values: dict[str, str], comment: str) -> Path:
    """Set ``values`` in ``$SMC_HOME/settings.env``, keeping its other lines."""
    path = home / HOME_SETTINGS
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines
            if line.strip().partition("=")[0].strip() not in values and line.strip() != f"# {comment}"]
    home.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(kept + [f"# {comment}"] + [f"{name}={value}" for name, value in values.items()]) + "\n")
    return path


def _date(env, name: str, default: str | None) -> date | None:
    text = env.get(name) or default
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a date (YYYY-MM-DD)") from None


def secret(env, name: str) -> str | None:
    """``NAME`` from the environment, or the contents of the file named by ``NAME_FILE``; None when neither.

    Why: Docker and Kubernetes hand secrets over as files (``/run/secrets/…``, a Secret
    volume), so a key never sits in the environment, ``docker inspect`` or a manifest. One
    trailing newline is dropped (``echo key > file``); both set, an unreadable or an empty
    file is a ConfigError naming the variable and the file."""
    value, path = env.get(name) or None, env.get(f"{name}_FILE") or None
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"both {name} and {name}_FILE are set: use one (the variable, or the file {path})")
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise ConfigError(f"{name}_FILE={path}: cannot read the secret file ({reason})") from None
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    if not text.strip():
        raise ConfigError(f"{name}_FILE={path}: the secret file is empty")
    return text


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
