"""Live-performance sensors, from the champion's resolved outcomes and its prediction log.

``performance_sensor`` resolves the outcomes whose horizon has passed (``smc_core.outcomes``,
the labels table's triple barrier) and starts one retrain per episode when the hit rate on
trades over the last ``performance_days`` trading days falls below ``min_hit_rate`` with
at least ``min_trades`` trades (seed 004, layer 6). ``skip_rate_sensor`` raises an alert
when the champion answers ``skip`` to more than ``skip_rate_alert`` of its newest calls —
usually a sign that its inputs no longer look like anything it was trained on.
"""

import json
import time

from dagster import SensorEvaluationContext, SensorResult, SkipReason, sensor

from sensors.retrain import REFRESH_JOB, default_status, fire, sensor_name, serving_champion
from smc_assets.resources import DatabaseResource, LandingResource, TrackingResource
from smc_core.alerts import raise_alert
from smc_core.lines import MAIN_LINE, ModelLine
from smc_core.model.package import package_horizon
from smc_core.monitoring import Episode, MonitoringSettings, days_back, latest_prediction_time, live_window
from smc_core.outcomes import live_summary, resolve_outcomes
from smc_core.registry import package_path


def build_performance_sensor(settings: MonitoringSettings, line: ModelLine = MAIN_LINE):
    @sensor(
        name=sensor_name("performance_sensor", line),
        job_name=REFRESH_JOB,
        minimum_interval_seconds=settings.performance_interval_s,
        default_status=default_status(settings),
        description=f"Every {settings.performance_interval_s} s: live hit rate of {line.name}'s champion's trades over "
                    f"{settings.performance_days} trading days; retrains below {settings.min_hit_rate:.0%} "
                    f"(with ≥ {settings.min_trades} trades).",
    )
    def performance_sensor(context: SensorEvaluationContext, database: DatabaseResource, landing: LandingResource,
                           tracking: TrackingResource):
        state = json.loads(context.cursor) if context.cursor else {}
        champion = serving_champion(context, tracking, line)
        if isinstance(champion, SensorResult):
            return champion
        model_version, version = champion
        db = database.database()
        newest = latest_prediction_time(db, model_version)
        if newest is None:
            return SensorResult(skip_reason=SkipReason(f"{model_version} has served no predictions yet"),
                                cursor=context.cursor)
        horizon = package_horizon(package_path(version, name=line.name))
        if horizon is None:
            return SensorResult(skip_reason=SkipReason(f"{model_version} records no label horizon in its lineage"),
                                cursor=context.cursor)
        resolved = resolve_outcomes(db, horizon=horizon, model_versions=[model_version])
        live = live_summary(db, model_version, since=days_back(newest, settings.performance_days))
        hit_rate, trades = live["hit_rate"], live["trades"]
        described = (f"hit rate {hit_rate:.1%} on {trades} trades" if hit_rate is not None else "no resolved trades") + \
            f" over {live['days']} trading day(s) to {live['last_day']} ({resolved.added} outcomes newly resolved)"
        decayed = hit_rate is not None and trades >= settings.min_trades and hit_rate < settings.min_hit_rate
        quiet = (f"{described}: fewer than {settings.min_trades} trades to judge" if trades < settings.min_trades
                 else f"{described} ≥ {settings.min_hit_rate:.0%}")
        return fire(context, "performance", decayed, model_version,
                    f"performance: {described} < {settings.min_hit_rate:.0%}", db, landing.timeframe, settings,
                    state, quiet=quiet, line=line)

    return performance_sensor


def build_skip_rate_sensor(settings: MonitoringSettings, minimum_interval_seconds: int = 300,
                           line: ModelLine = MAIN_LINE):
    @sensor(
        name=sensor_name("skip_rate_sensor", line),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status(settings),
        description=f"Alerts when more than {settings.skip_rate_alert:.0%} of {line.name}'s champion's newest "
                    f"{settings.skip_rate_window} answers are 'skip' (once per episode).",
    )
    def skip_rate_sensor(context: SensorEvaluationContext, database: DatabaseResource, tracking: TrackingResource):
        state = json.loads(context.cursor) if context.cursor else {}
        champion = serving_champion(context, tracking, line)
        if isinstance(champion, SensorResult):
            return champion
        model_version, _ = champion
        db = database.database()
        window = live_window(db, model_version, settings.skip_rate_window)
        if len(window) < settings.skip_rate_window:
            return SensorResult(skip_reason=SkipReason(
                f"{len(window)} predictions of {model_version}; the skip rate is judged on {settings.skip_rate_window}"),
                cursor=context.cursor)
        rate = window.skip_rate
        high = rate > settings.skip_rate_alert
        now = time.time()
        episode, key = Episode.from_json(state.get("episode")).step(high, f"skip:{model_version}:{int(now)}", now,
                                                                    settings.cooldown_hours * 3600)
        cursor = json.dumps({"episode": episode.to_json()}, sort_keys=True)
        described = (f"{rate:.0%} of the newest {len(window)} answers of {model_version} are 'skip' "
                     f"({window.start:%Y-%m-%d %H:%M} … {window.end:%Y-%m-%d %H:%M} UTC)")
        if key is None:
            return SensorResult(skip_reason=SkipReason(described + ("" if high else " — below the alert")), cursor=cursor)
        alert = raise_alert(db, "skip_rate", model_version, described + f" > {settings.skip_rate_alert:.0%}",
                            {"skip_rate": rate, "window": len(window), "episode": key})
        context.log.error(f"ALERT {alert}: {described}")
        return SensorResult(skip_reason=SkipReason(f"alert {alert} raised: {described}"), cursor=cursor)

    return skip_rate_sensor
