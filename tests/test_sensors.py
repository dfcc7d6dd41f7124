"""The monitoring sensors, evaluated with ``build_sensor_context`` on real data: bars loaded
from NinjaTrader files by the real market-data job, a registered champion, and predictions
logged by the service runtime as it answers a replayed day. No drift → no run; a volatility
regime → exactly one retrain request with its reason, and no duplicate on later ticks; the
chain sensor starts retrain_job once the refresh runs succeeded; live hit rate below the
threshold → a retrain; a skip-heavy model → an alert; a failed run → an alert."""

from __future__ import annotations

import json
import os
import time
from datetime import date

import mlflow
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, build_run_status_sensor_context, build_sensor_context
from serving_setup import tiny_package

from smc_core.alerts import recent_alerts
from smc_core.calendar import CME_EQUITY
from smc_core.drift import latest_reports
from smc_core.monitoring import MonitoringSettings
from smc_core.outcomes import live_summary
from smc_core.promotion import promote
from smc_core.registry import TrackingConfig, configure, register_package
from smc_core.serving.replay import replay_stored_day
from smc_core.serving.runtime import Runtime, ServiceSettings
from smc_core.settings import Settings
from smc_core.store import load_bars
from smc_core.synthetic import SyntheticConfig, write_synthetic
from smc_jobs.local import LocalRunner

START = date(2024, 3, 4)
CALM = SyntheticConfig(days=7, seed=5, start=START, edge="smc", edge_strength=0.9)
"""Five days the champion learns from, then two live days of the same market."""
STORMY = SyntheticConfig(days=3, seed=9, start=date(2024, 3, 13), edge="smc", edge_strength=0.9, annual_vol=0.6)
"""Three days later, volatility almost four times as high."""
pytestmark = pytest.mark.slow  # ~2.5 min: not repeated on the embedded server (the data-layer tests are)
SETTINGS = MonitoringSettings(cooldown_hours=24.0, refresh_days=2, min_trades=20)


class Loop:
    """The system as the sensors see it: definitions, an instance, a champion and a live service runtime."""

    def __init__(self, database, home):
        from smc_jobs.definitions import build_definitions

        self.database, self.home = database, home
        self.settings = Settings.from_env()
        configure(TrackingConfig.from_settings(self.settings))
        (home / "dagster").mkdir()
        self.instance = DagsterInstance.local_temp(str(home / "dagster"))
        self.definitions = build_definitions(self.settings, SETTINGS)
        self.runner = LocalRunner(self.definitions, self.instance)
        self.land(CALM)
        first_live = CME_EQUITY.trading_days(START, date(2024, 3, 31))[5]
        trained = load_bars(database, "ES", "1m", pd.Timestamp("2024-01-01", tz="UTC"),
                            CME_EQUITY.session_bounds(first_live)[0])  # as stored: what the service will see
        package = tiny_package(home / "package", bars_frame=trained)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(package), "model_package")
            self.version = register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package", alias=None)
        promote(database, self.version, "test champion")
        self.model_version = f"smc-lora/{self.version}"
        self.runtime = Runtime(ServiceSettings.from_env({"SMC_DEV_MODE": "1", "MODEL_POLL_SECONDS": "0.5"}),
                               database=database).start()

    def land(self, config: SyntheticConfig) -> list[str]:
        """Drop the exports in the landing folder and run what the file sensor requests."""
        from smc_jobs.demo import load_landing_files

        write_synthetic(config, self.settings.landing_dir)
        _, rows = load_landing_files(self.runner)
        assert all(success for _, success, *_ in rows), rows
        return [key for key, *_ in rows]

    def serve_day(self, day: date) -> None:
        """Replay a stored day through the service runtime, which logs every prediction."""
        replay_stored_day(self.database, "ES", day, lambda payload: self.runtime.predict_payload(
            payload, time.perf_counter()))
        assert self.runtime.log.flush(30)

    def tick(self, name: str, sensor=None):
        """Evaluate a sensor once, carrying its cursor from the previous tick."""
        return self.runner.tick(name, sensor)


@pytest.fixture(scope="module")
def loop(database, tmp_path_factory):
    home = tmp_path_factory.mktemp("loop")
    env = {"SMC_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "DATABASE_URL": database.url, "SMC_PARTITION_START": "2024-01-01"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    system = Loop(database, home)
    for day in CME_EQUITY.trading_days(START, date(2024, 3, 31))[5:7]:
        system.serve_day(day)
    yield system
    system.runtime.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_no_drift_means_no_run_and_a_stored_report(loop):
    result = loop.tick("drift_sensor")
    assert not result.run_requests
    assert result.skip_message.startswith("no drift:"), result.skip_message
    report = latest_reports(loop.database, loop.model_version, limit=1)[0]
    assert not report["dataset_drift"] and report["drifted_share"] < SETTINGS.drift_share
    assert report["current_rows"] == SETTINGS.drift_window and os.path.getsize(report["html_path"]) > 100_000
    again = loop.tick("drift_sensor")
    assert not again.run_requests and "no new predictions" in again.skip_message


def test_a_regime_change_triggers_exactly_one_retrain_with_its_reason(loop):
    stormy_days = CME_EQUITY.trading_days(STORMY.start, date(2024, 3, 31))[:STORMY.days]
    loop.land(STORMY)
    for day in stormy_days[:2]:
        loop.serve_day(day)
    result = loop.tick("drift_sensor")
    requests = result.run_requests
    assert [r.partition_key.keys_by_dimension for r in requests] == [
        {"symbol": "ES", "day": day.isoformat()} for day in stormy_days[1:3]]  # the newest refresh_days days
    episode = requests[0].tags["smc/retrain_episode"]
    assert all(r.tags["smc/retrain_episode"] == episode and r.job_name == "market_data_job" for r in requests)
    assert requests[0].tags["smc/trigger"] == "drift" and "features drifted" in requests[0].tags["smc/reason"]
    assert episode.startswith(f"drift:{loop.model_version}:") and len({r.run_key for r in requests}) == 2
    report = latest_reports(loop.database, loop.model_version, limit=1)[0]
    assert report["dataset_drift"] and f"report {report['id']}" in requests[0].tags["smc/reason"]

    # the same drifted window again: nothing new; more drifted traffic: the episode already fired
    assert not loop.tick("drift_sensor").run_requests
    loop.serve_day(stormy_days[2])
    later = loop.tick("drift_sensor")
    assert not later.run_requests and "already triggered" in later.skip_message

    # the chain: nothing until the refresh runs exist and succeeded, then one retrain_job request
    assert not loop.tick("retrain_chain_sensor").run_requests
    for request in requests:
        assert loop.runner.execute(request).success
    chained = loop.tick("retrain_chain_sensor").run_requests
    assert [(r.job_name, r.run_key) for r in chained] == [("retrain_job", episode)]
    assert chained[0].tags["smc/reason"] == requests[0].tags["smc/reason"]
    assert chained[0].run_config["ops"]["lora_model"]["config"]["recent_days"] == SETTINGS.retrain_days
    assert not loop.tick("retrain_chain_sensor").run_requests  # one episode, one retrain


def _performance_sensor(min_hit_rate: float):
    from sensors.performance import build_performance_sensor
    from dataclasses import replace

    return build_performance_sensor(replace(SETTINGS, min_hit_rate=min_hit_rate))


def test_live_hit_rate_below_the_threshold_triggers_a_retrain(loop):
    first = loop.tick("performance_sensor_healthy", _performance_sensor(0.01))
    live = live_summary(loop.database, loop.model_version)
    assert live["trades"] >= SETTINGS.min_trades, live  # outcomes were resolved from the labels table
    assert not first.run_requests and "≥ 1%" in first.skip_message
    decayed = loop.tick("performance_sensor_decayed", _performance_sensor(min(0.99, live["hit_rate"] + 0.05)))
    assert decayed.run_requests and all(r.tags["smc/trigger"] == "performance" for r in decayed.run_requests)
    assert f"hit rate {live['hit_rate']:.1%}" in decayed.run_requests[0].tags["smc/reason"]
    assert not loop.tick("performance_sensor_decayed", _performance_sensor(0.99)).run_requests  # same episode


def test_the_monitoring_job_materializes_outcomes_and_a_drift_report(loop):
    from smc_jobs.local import materialized

    assets = materialized(loop.runner.run("monitoring_job"))
    live = live_summary(loop.database, loop.model_version)
    assert assets["outcomes"]["pending"] >= 0 and f"| {loop.model_version} | no |" in assets["outcomes"]["live_metrics"]
    assert assets["outcomes"]["champion_hit_rate"] == pytest.approx(live["hit_rate"])
    report = assets["drift_report"]
    assert report["model_version"] == loop.model_version and report["report_id"] == latest_reports(
        loop.database, loop.model_version, limit=1)[0]["id"]
    assert os.path.exists(report["report_html"]) and "| atr |" in report["features"]


def test_a_skip_heavy_champion_raises_one_alert(loop):
    from dataclasses import replace

    from sensors.performance import build_skip_rate_sensor
    from smc_core.monitoring import live_window

    rate = live_window(loop.database, loop.model_version, SETTINGS.skip_rate_window).skip_rate
    quiet = loop.tick("skip_quiet", build_skip_rate_sensor(replace(SETTINGS, skip_rate_alert=min(1.0, rate + 0.01))))
    assert "below the alert" in quiet.skip_message and not recent_alerts(loop.database, "skip_rate")
    noisy = build_skip_rate_sensor(replace(SETTINGS, skip_rate_alert=max(0.01, rate - 0.01)))
    loop.tick("skip_noisy", noisy)
    loop.tick("skip_noisy", noisy)
    alerts = recent_alerts(loop.database, "skip_rate")
    assert len(alerts) == 1 and alerts[0]["subject"] == loop.model_version
    assert alerts[0]["details"]["skip_rate"] == pytest.approx(rate)


def test_a_failed_run_becomes_an_alert(loop):
    from sensors.run_failure import build_run_failure_sensor

    run = loop.definitions.resolve_job_def("rollback_job").execute_in_process(
        instance=loop.instance, raise_on_error=False, tags={"smc/retrain_episode": "test:episode"})
    assert not run.success  # there is no 'previous' version to roll back to
    failure = next(e for e in run.all_events if e.event_type_value == "PIPELINE_FAILURE")
    sensor = build_run_failure_sensor(SETTINGS)
    with build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=loop.instance,
                                         dagster_run=run.dagster_run, dagster_event=failure,
                                         resources={"database": loop.definitions.resources["database"]}) as context:
        sensor(context.for_run_failure())
    alert = recent_alerts(loop.database, "run_failure")[0]
    assert alert["subject"].startswith("rollback_job run") and "test:episode" in alert["subject"]
    assert "no 'previous' alias" in alert["message"] and alert["details"]["run_id"] == run.run_id


def test_a_shadow_period_ends_in_a_decision_on_live_outcomes(loop):
    from smc_core.promotion import decisions, shadow_state, start_shadow
    from smc_core.registry import alias_version

    package = tiny_package(loop.home / "shadow_package", seed=8)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(package), "model_package")
        shadow = register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package", alias=None)
    start_shadow(loop.database, shadow, "gates passed (test)", until=pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1))
    assert "in shadow until" in loop.tick("shadow_sensor").skip_message
    deadline = time.monotonic() + 30
    while loop.runtime.shadow.current is None and time.monotonic() < deadline:  # the service follows the alias
        time.sleep(0.2)
    assert loop.runtime.shadow.current.version == f"smc-lora/{shadow}"
    (day,) = loop.land(SyntheticConfig(days=1, seed=13, start=date(2024, 3, 18), edge="smc", edge_strength=0.9))
    loop.serve_day(date.fromisoformat(day.split("|")[0]))
    with loop.database.connection() as connection:
        logged = dict(connection.execute("SELECT shadow, count(*) FROM predictions WHERE ts >= '2024-03-17' "
                                         "GROUP BY shadow").fetchall())
    assert logged[True] == logged[False] > 1000  # the shadow answered every request, logged apart

    # the period is over: the sensor requests the review, which decides on the live record and clears the alias
    with loop.database.connection() as connection:
        connection.execute("UPDATE model_promotions SET metrics = jsonb_set(metrics, '{shadow_until}', "
                           "to_jsonb(%s::text)) WHERE decision = 'shadow'", ((pd.Timestamp.now(tz="UTC")
                                                                              - pd.Timedelta(minutes=1)).isoformat(),))
    (request,) = loop.tick("shadow_sensor").run_requests
    assert request.run_key.startswith(f"shadow-review:{shadow}:")
    run = loop.runner.run("shadow_review_job", tags=request.tags,
                          asset_selection=[AssetKey("shadow_review")])  # the Bento rebuild is tested elsewhere
    verdict = run.asset_materializations_for_node("shadow_review")[0].metadata
    decision = decisions(loop.database)[-1]
    assert decision["version"] == shadow and decision["decision"] == verdict["verdict"].value
    assert decision["metrics"]["shadow"]["trades"] == verdict["shadow_live"].value["trades"]
    assert ("the shadow made" in decision["reason"]) or ("fewer than" in decision["reason"])
    assert alias_version("shadow") is None and shadow_state(loop.database) is None
    expected_champion = shadow if verdict["verdict"].value == "promoted" else loop.version
    assert alias_version("champion") == expected_champion


def test_schedules_are_off_until_switched_on_and_the_weekly_one_refreshes_then_retrains(loop):
    from dagster import DefaultScheduleStatus, build_schedule_context

    from smc_jobs.definitions import build_definitions

    schedules = {s.name: s for s in loop.definitions.schedules}
    assert {name: (s.cron_schedule, s.execution_timezone) for name, s in schedules.items()} == {
        "weekly_retrain": ("0 2 * * 0", "UTC"), "daily_monitoring": ("0 6 * * *", "UTC"),
        "monthly_base_model": ("0 3 1 * *", "UTC")}
    assert all(s.default_status == DefaultScheduleStatus.STOPPED for s in schedules.values())
    switched_on = build_definitions(loop.settings, MonitoringSettings(automation=True))
    assert all(s.default_status == DefaultScheduleStatus.RUNNING for s in switched_on.schedules)
    assert all(s.default_status.value == "RUNNING" for s in switched_on.sensors)

    weekly = schedules["weekly_retrain"]
    resources = {key: loop.definitions.resources[key] for key in weekly.required_resource_keys}
    with build_schedule_context(instance=loop.instance, resources=resources,
                                repository_def=loop.definitions.get_repository_def(),
                                scheduled_execution_time=pd.Timestamp("2026-11-22 02:00", tz="UTC")) as context:
        requests = list(weekly.evaluate_tick(context).run_requests)
    assert requests and {r.tags["smc/retrain_episode"] for r in requests} == {"weekly:20261122T0200Z"}
    assert all(r.tags["smc/trigger"] == "schedule" and r.job_name in (None, "market_data_job") for r in requests)
