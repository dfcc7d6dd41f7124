"""What the monitoring sensors decide, without Dagster: their settings, the live windows they
read from the prediction log, and when a condition becomes a retrain.

A condition (drift, decaying hit rate, a skip-heavy model) usually persists over many sensor
ticks. ``Episode`` turns it into one trigger per episode: the first tick that sees the
condition fires, later ticks inside the same episode stay quiet until the cooldown has
passed (a retrain the gates refused may then be retried), and a tick that no longer sees
the condition closes the episode. The sensors keep this state in their cursors.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from smc_core.calendar import CME_EQUITY, SessionCalendar
from smc_core.db import Database
from smc_core.errors import ConfigError
from smc_core.instruments import calendar_of
from smc_core.settings import env_flag, env_number


@dataclass(frozen=True)
class MonitoringSettings:
    automation: bool = False
    """SMC_AUTOMATION: start every sensor and schedule switched on (the UI can still toggle each)."""
    drift_interval_s: int = 3600
    drift_window: int = 2760
    """Newest live predictions of the champion compared with its reference sample (two CME
    sessions of 1-minute bars: one session's trend alone moves path features too much)."""
    drift_min_rows: int = 1000
    drift_share: float = 0.2
    """Share of drifted features that makes the live window drifted."""
    drift_threshold: float = 0.3
    """Normed Wasserstein distance above which one feature counts as drifted (Evidently's 0.1
    flags half the features on an ordinary trending day; see the README's measurements)."""
    prediction_psi: float = 0.25
    """PSI of the served label mix above which predictions drifted (0.25 is the usual
    "major shift" line). The probability columns are reported, not triggered on: a model's
    probabilities sit in a narrow band, so quantile bins turn immaterial moves into large PSI."""
    performance_interval_s: int = 900
    performance_days: int = 5
    min_hit_rate: float = 0.55
    """Seed 004 layer 6: retrain when live accuracy on trades falls below this."""
    min_trades: int = 50
    skip_rate_alert: float = 0.80
    skip_rate_window: int = 500
    cooldown_hours: float = 24.0
    refresh_days: int = 2
    """Newest trading days per symbol whose bars, features and labels a retrain reloads first."""
    retrain_days: int = 30
    """Trading days a retrain fine-tunes on (the newest; a sliding window like FreqAI's)."""
    shadow_hours: float = 0.0
    """A gated challenger serves in shadow this long before its live record decides; 0: promote at once."""
    retrain_config: dict | None = None
    """Run config merged into every retrain_job request (SMC_RETRAIN_CONFIG: a YAML or JSON file)."""

    def __post_init__(self):
        if not 0 < self.drift_share <= 1:
            raise ConfigError(f"drift share must be in (0, 1], got {self.drift_share}")
        if not 0 < self.min_hit_rate < 1 or not 0 < self.skip_rate_alert <= 1:
            raise ConfigError("hit-rate and skip-rate thresholds must be in (0, 1)")
        if self.drift_min_rows > self.drift_window:
            raise ConfigError(f"drift window ({self.drift_window}) is smaller than its minimum ({self.drift_min_rows})")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "MonitoringSettings":
        env = os.environ if env is None else env
        return cls(
            automation=env_flag(env, "SMC_AUTOMATION"),
            drift_interval_s=env_number(env, "SMC_DRIFT_INTERVAL_S", 3600, int, 10, 7 * 86400),
            drift_window=env_number(env, "SMC_DRIFT_WINDOW", 2760, int, 50, 10**7),
            drift_min_rows=env_number(env, "SMC_DRIFT_MIN_ROWS", 1000, int, 30, 10**7),
            drift_share=env_number(env, "SMC_DRIFT_SHARE", 0.2, float, 0.01, 1.0),
            drift_threshold=env_number(env, "SMC_DRIFT_THRESHOLD", 0.3, float, 0.001, 10.0),
            prediction_psi=env_number(env, "SMC_PREDICTION_DRIFT_PSI", 0.25, float, 0.001, 10.0),
            performance_interval_s=env_number(env, "SMC_PERFORMANCE_INTERVAL_S", 900, int, 10, 7 * 86400),
            performance_days=env_number(env, "SMC_PERFORMANCE_DAYS", 5, int, 1, 365),
            min_hit_rate=env_number(env, "SMC_MIN_HIT_RATE", 0.55, float, 0.01, 0.99),
            min_trades=env_number(env, "SMC_MIN_TRADES", 50, int, 1, 10**6),
            skip_rate_alert=env_number(env, "SMC_SKIP_RATE_ALERT", 0.80, float, 0.01, 1.0),
            skip_rate_window=env_number(env, "SMC_SKIP_RATE_WINDOW", 500, int, 10, 10**7),
            cooldown_hours=env_number(env, "SMC_RETRAIN_COOLDOWN_H", 24.0, float, 0.0, 24 * 365),
            refresh_days=env_number(env, "SMC_REFRESH_DAYS", 2, int, 1, 60),
            retrain_days=env_number(env, "SMC_RETRAIN_DAYS", 30, int, 2, 5000),
            shadow_hours=env_number(env, "SMC_SHADOW_HOURS", 0.0, float, 0.0, 24 * 90),
            retrain_config=run_config_file(env.get("SMC_RETRAIN_CONFIG")),
        )

    def as_dict(self) -> dict:
        return asdict(self)


def run_config_file(path: str | None, source: str = "SMC_RETRAIN_CONFIG") -> dict | None:
    """A Dagster run config from a YAML or JSON file; ``source`` names where the path came from."""
    if not path:
        return None
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).expanduser().read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{source}={path!r} cannot be read as YAML/JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source}={path!r} must hold a run config mapping (ops: ...)")
    return loaded


# --- episodes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Episode:
    """The trigger state one sensor keeps in its cursor (JSON)."""

    active: str | None = None
    """Id of the episode in progress (the condition held on the last tick), else None."""
    fired_at: float | None = None
    """Unix time of the last trigger."""
    fired: int = 0
    """Triggers in the active episode (the run key's suffix)."""

    def step(self, condition: bool, episode_id: str, now: float, cooldown_s: float) -> tuple["Episode", str | None]:
        """The next state, and the run key to fire with (None: stay quiet)."""
        if not condition:
            return replace(self, active=None, fired=0), None
        cooled = self.fired_at is None or now - self.fired_at >= cooldown_s
        if self.active is None:
            if not cooled:  # a new episode right after a trigger: wait out the cooldown
                return replace(self, active=episode_id, fired=0), None
            return Episode(episode_id, now, 1), f"{episode_id}#1"
        if cooled:
            fired = self.fired + 1
            return Episode(self.active, now, fired), f"{self.active}#{fired}"
        return self, None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict | None) -> "Episode":
        return cls(**value) if value else cls()


def episode_id(kind: str, model_version: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{kind}:{model_version}:{stamp}"


# --- live windows from the prediction log ------------------------------------------------

@dataclass(frozen=True)
class LiveWindow:
    """The newest logged predictions of one model version (champion traffic, not shadow)."""

    features: np.ndarray
    """[n, n_features] feature vectors of the decision bars, oldest first."""
    probabilities: np.ndarray
    """[n, 3] long, short, skip."""
    labels: np.ndarray
    """Served labels (after the confidence tiers)."""
    start: pd.Timestamp | None
    end: pd.Timestamp | None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def skip_rate(self) -> float | None:
        return float(np.mean(self.labels == "skip")) if len(self) else None


def live_window(db: Database, model_version: str, limit: int, *, feature_set: str | None = None,
                shadow: bool = False) -> LiveWindow:
    """The ``limit`` newest predictions ``model_version`` served (by bar time), oldest first."""
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    with db.connection() as connection:
        rows = connection.execute(
            "SELECT ts, features, p_long, p_short, p_skip, label FROM predictions "
            "WHERE model_version = %s AND shadow = %s AND (%s::text IS NULL OR feature_set = %s) "
            "ORDER BY ts DESC, request_id LIMIT %s",
            (model_version, shadow, feature_set, feature_set, limit)).fetchall()
    rows.reverse()
    if not rows:
        return LiveWindow(np.empty((0, 0)), np.empty((0, 3)), np.empty(0, dtype=object), None, None)
    return LiveWindow(
        features=np.array([row[1] for row in rows], dtype=np.float64),
        probabilities=np.array([row[2:5] for row in rows], dtype=np.float64),
        labels=np.array([row[5] for row in rows], dtype=object),
        start=pd.Timestamp(rows[0][0]), end=pd.Timestamp(rows[-1][0]),
    )


def latest_prediction_time(db: Database, model_version: str, *, shadow: bool = False) -> pd.Timestamp | None:
    """Bar time of the newest logged prediction of ``model_version`` (None: it has served none)."""
    return prediction_times(db, model_version, shadow=shadow)[1]


def prediction_times(db: Database, model_version: str, *,
                     shadow: bool = False) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """Bar times of the first and newest logged predictions of ``model_version`` (None, None: none)."""
    with db.connection() as connection:
        first, newest = connection.execute(
            "SELECT min(ts), max(ts) FROM predictions WHERE model_version = %s AND shadow = %s",
            (model_version, shadow)).fetchone()
    return (None, None) if first is None else (pd.Timestamp(first), pd.Timestamp(newest))


# --- the newest data ---------------------------------------------------------------------

def newest_trading_days(db: Database, timeframe: str, count: int,
                        calendar: SessionCalendar | None = None) -> dict[str, list[date]]:
    """Per symbol with stored bars, its ``count`` newest trading days up to its last bar, on
    ``calendar`` (default: each symbol's own): the partitions a retrain reloads (the last labels
    of a day need the bars after it)."""
    with db.connection() as connection:
        rows = connection.execute("SELECT symbol, max(ts) FROM bars WHERE timeframe = %s GROUP BY symbol ORDER BY symbol",
                                  (timeframe,)).fetchall()
    newest = {}
    for symbol, last_bar in rows:
        sessions = calendar or calendar_of(symbol)
        last_day = sessions.trading_day_of(pd.DatetimeIndex([pd.Timestamp(last_bar)]))[0].item()
        days = sessions.trading_days(last_day - timedelta(days=2 * count + 10), last_day)
        newest[symbol] = days[-count:]
    return newest


def window_start(db: Database, timeframe: str, days: int, calendar: SessionCalendar = CME_EQUITY) -> pd.Timestamp | None:
    """Session open of the ``days``-th trading day back from the newest bar of any symbol:
    where a sliding training window of that many days begins. None without bars."""
    newest = newest_trading_days(db, timeframe, 1, calendar)
    if not newest:
        return None
    return days_back(max(days_[-1] for days_ in newest.values()), days, calendar)


def days_back(last_day: date | pd.Timestamp, days: int, calendar: SessionCalendar = CME_EQUITY) -> pd.Timestamp:
    """Session open of the ``days``-th trading day counting back from ``last_day`` (a trading
    day, or a bar time whose trading day is taken) inclusive."""
    if isinstance(last_day, pd.Timestamp):
        last_day = calendar.trading_day_of(pd.DatetimeIndex([last_day]))[0].item()
    first = calendar.trading_days(last_day - timedelta(days=2 * days + 10), last_day)[-days:][0]
    return calendar.session_bounds(first)[0]


# --- drift of the live window ------------------------------------------------------------

def drift_columns(feature_names) -> list[int]:
    """Indices of the features drift is measured on: all but the calendar encodings (group
    ``time``), whose live distribution is set by the clock — a two-day window holds two
    weekdays and never looks like months of training data — not by the market."""
    from smc_core.features import CATALOGUE

    groups = {spec.name: spec.group for spec in CATALOGUE.specs}
    return [i for i, name in enumerate(feature_names) if groups.get(name) != "time"]


@dataclass(frozen=True)
class DriftCheck:
    """One drift check of a model's newest live predictions against its package's reference."""

    model_version: str
    window: LiveWindow
    result: object | None
    """The ``smc_core.drift.DriftResult``; None when the window was too small to judge."""
    report_id: int | None
    html_path: Path | None
    reason: str

    @property
    def label_drift(self) -> bool:
        """The served label mix moved (the prediction drift that triggers)."""
        return self.result is not None and any(row.drifted for row in self.result.predictions if row.column == "label")

    @property
    def drifted(self) -> bool:
        return self.result is not None and (self.result.dataset_drift or self.label_drift)


def check_drift(db: Database, package, model_version: str, settings: MonitoringSettings, reports_dir: Path,
                *, reason: str) -> DriftCheck:
    """Evidently between ``package``'s reference sample and the newest ``drift_window`` live
    predictions of ``model_version``; the report is stored (``drift_reports`` + HTML)."""
    from smc_core.drift import DriftConfig, run_drift, store_report

    window = live_window(db, model_version, settings.drift_window, feature_set=package.spec.feature_set_version)
    if len(window) < settings.drift_min_rows:
        return DriftCheck(model_version, window, None, None, None,
                          f"{len(window)} live predictions of {model_version}; drift needs {settings.drift_min_rows}")
    columns = drift_columns(package.spec.feature_names)
    names = [package.spec.feature_names[i] for i in columns]
    references = package.reference_probabilities
    with_predictions = references is not None and len(references) >= 100
    config = DriftConfig(drift_share=settings.drift_share, method="wasserstein", threshold=settings.drift_threshold,
                         prediction_method="psi", prediction_threshold=settings.prediction_psi,
                         min_current_rows=settings.drift_min_rows,
                         min_reference_rows=100)
    result = run_drift(package.reference[:, columns], window.features[:, columns], names,
                       reference_probabilities=references if with_predictions else None,
                       current_probabilities=window.probabilities if with_predictions else None, config=config)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    html_path = result.save_html(Path(reports_dir) / f"drift-{model_version.replace('/', '-v')}-{stamp}.html")
    report_id = store_report(db, result, model_version=model_version, window_start=window.start.to_pydatetime(),
                             window_end=window.end.to_pydatetime(), html_path=html_path, reason=reason)
    drifted = ", ".join(result.drifted_features[:8]) + (" …" if result.n_drifted > 8 else "")
    check = DriftCheck(model_version, window, result, report_id, html_path, "")
    label = next((row for row in result.predictions if row.column == "label"), None)
    predictions = ("not measured (no reference probabilities in the package)" if label is None else
                   f"label-mix PSI {'–' if label.score is None else format(label.score, '.3f')} (threshold {settings.prediction_psi:g})"
                   f"{' — drifted' if check.label_drift else ''}")
    summary = (f"{result.n_drifted}/{result.n_features} features drifted ({result.drifted_share:.0%}, threshold "
               f"{settings.drift_share:.0%}{': ' + drifted if drifted else ''}); predictions: {predictions}; "
               f"over {len(window)} live predictions ({window.start:%Y-%m-%d %H:%M} … {window.end:%Y-%m-%d %H:%M} UTC)")
    return replace(check, reason=summary)
