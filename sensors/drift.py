"""Drift sensor: the champion's newest live predictions against the reference sample in its
package (Evidently, ``smc_core.drift``). A drifted window — enough drifted features, or
drifted predictions — starts one retrain per episode; every check is a ``drift_reports`` row
with its HTML report."""

import json
from pathlib import Path

from dagster import SensorEvaluationContext, SensorResult, SkipReason, sensor

from sensors.retrain import REFRESH_JOB, default_status, fire, sensor_name, serving_champion
from smc_assets.resources import DatabaseResource, LandingResource, TrackingResource
from smc_core.lines import MAIN_LINE, ModelLine
from smc_core.model import load_package
from smc_core.registry import package_path
from smc_core.monitoring import MonitoringSettings, check_drift, latest_prediction_time


def build_drift_sensor(settings: MonitoringSettings, reports_dir: Path, line: ModelLine = MAIN_LINE):
    """The drift sensor of one model line's champion (an added line's: ``drift_sensor_5m_h15``); a
    drift retrains that line."""

    @sensor(
        name=sensor_name("drift_sensor", line),
        job_name=REFRESH_JOB,
        minimum_interval_seconds=settings.drift_interval_s,
        default_status=default_status(settings),
        description=f"Every {settings.drift_interval_s} s: Evidently drift of {line.name}'s champion's newest "
                    f"{settings.drift_window} live predictions; retrains when ≥ {settings.drift_share:.0%} of the "
                    "features or the predictions drifted.",
    )
    def drift_sensor(context: SensorEvaluationContext, database: DatabaseResource, landing: LandingResource,
                     tracking: TrackingResource):
        state = json.loads(context.cursor) if context.cursor else {}
        champion = serving_champion(context, tracking, line)
        if isinstance(champion, SensorResult):
            return champion
        model_version, version = champion
        db = database.database()
        newest = latest_prediction_time(db, model_version)
        seen = {"model_version": model_version, "newest": newest.isoformat() if newest is not None else None}
        if newest is None or all(state.get(key) == value for key, value in seen.items()):
            return SensorResult(skip_reason=SkipReason(f"no new predictions of {model_version} since the last check"),
                                cursor=context.cursor)
        check = check_drift(db, load_package(package_path(version, name=line.name)), model_version, settings,
                            reports_dir, reason=sensor_name("drift_sensor", line))
        if check.result is None:
            return SensorResult(skip_reason=SkipReason(check.reason), cursor=context.cursor)
        state.update(seen, report=check.report_id)
        context.log.info(f"drift report {check.report_id} ({check.html_path}): {check.reason}")
        return fire(context, "drift", check.drifted, model_version, f"drift: {check.reason}; report {check.report_id}",
                    db, landing.timeframe, settings, state, quiet=f"no drift: {check.reason}", line=line)

    return drift_sensor
