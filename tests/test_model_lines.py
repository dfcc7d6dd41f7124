"""Model lines in the lineage: an added line (SMC_MODEL_LINES=5m) is its own registered model,
trained on its timeframe's features and labels, judged by its own gates on its own bars,
promoted, refused and rolled back under its own name, with its own Bento, while the main
line's aliases and decisions stay as they were; the retrain chain starts every line's retrain.
"""

from __future__ import annotations

import json
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, RunRequest, build_sensor_context
from pipeline_setup import QUIET, trained_pipeline

from sensors.retrain import EPISODE_TAG, LINE_TAG, REFRESH_JOB, build_retrain_chain_sensor, retrain_run_config
from smc_core.errors import ConfigError
from smc_core.labels import Horizon
from smc_core.lines import MAIN_LINE, ModelLine, model_lines
from smc_core.model.package import load_package
from smc_core.monitoring import MonitoringSettings
from smc_core.promotion import decisions
from smc_core.registry import alias_version, package_path

warnings.filterwarnings("ignore", category=Warning, module="dagster_mlflow")
pytestmark = pytest.mark.slow  # ~2.5 min of training and evaluation: not repeated on the embedded server

LINE = ModelLine("5m", 15)
NAME = "smc-lora-5m-h15"
FAST = {"folds": 2, "base_epochs": 1, "min_trades": 0, "candidate_thresholds": [0.34, 0.4]}
"""Low entry thresholds: a one-epoch model on a few days of 5-minute bars still trades, so each
backtest's Sharpe ratio is defined and the permissive gates pass."""
PERMISSIVE = {**FAST, "min_dsr": 0.0, "max_pbo": 1.0, "max_spa_pvalue": 1.0, "min_sharpe_improvement": -100.0,
              "max_drawdown_worsening": 100.0, "max_ece": 1.0, "max_latency_ms": 1000.0}


def test_lines_are_configuration_checked_with_the_reason():
    assert model_lines("1m", None, None) == (MAIN_LINE,)
    assert model_lines("1m", "5m,15m", "5m, 15m:8") == (MAIN_LINE, ModelLine("5m", 15), ModelLine("15m", 8))
    assert [line.name for line in model_lines("1m", "5m,15m", "5m,15m:8")] == ["smc-lora", NAME, "smc-lora-15m-h8"]
    assert ModelLine("5m", 15).key_prefix == ["line_5m_h15"] and MAIN_LINE.key_prefix == []
    for value, message in (("1h", "line 1h has no features: the lineage computes 1m, 5m"),
                           ("5m,5m", "line 5m is listed twice"), ("5m:x", "'5m:x' is not a line"),
                           ("5m:0", "at least 1 bar")):
        with pytest.raises(ConfigError, match=message):
            model_lines("1m", None, value)
    # a line's horizon is its own; the configured barriers apply, another bar count is refused
    assert LINE.horizon(Horizon(15, 2.0, 1.0)) == Horizon(15, 2.0, 1.0)
    assert ModelLine("5m", 12).horizon(Horizon()) == Horizon(12)
    with pytest.raises(ConfigError, match="add a line 5m:30"):
        ModelLine("5m", 12).horizon(Horizon(30))
    assert MAIN_LINE.horizon(Horizon(30)) == Horizon(30)


@pytest.fixture(scope="module")
def pipeline(database, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return trained_pipeline(database.url, tmp_path_factory.mktemp("smc_home"), days=5,
                                base_config={"epochs": 1}, lora_config={"epochs": 1, "baselines": False},
                                env={"SMC_MODEL_LINES": "5m"})


def _run(pipeline, job: str, asset: str, config: dict, **kwargs):
    return pipeline.run(job, f"line_5m_h15__{asset}", config, **kwargs)


def _metadata(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_an_added_line_trains_its_own_registered_model_on_its_timeframe(pipeline, database):
    main_challenger = alias_version("challenger")
    assert _run(pipeline, "base_model_job_5m_h15", "base_model", {"epochs": 1}).success
    result = _run(pipeline, "train_job_5m_h15", "lora_model", {"epochs": 1, "baselines": False})
    meta = _metadata(result)["line_5m_h15/lora_model"]
    assert meta["model_version"] == f"{NAME}/1" and alias_version("challenger", name=NAME) == "1"
    lineage = load_package(package_path("1", name=NAME)).lineage
    assert lineage["registered_model"] == NAME and lineage["data"]["timeframe"] == "5m"
    assert lineage["data"]["horizon"] == "h15_u1.5_d1.5"
    # trained on 5-minute windows: the newest validation window ends on the 5-minute grid
    assert pd.Timestamp(lineage["data"]["valid_end"]).minute % 5 == 0
    assert alias_version("challenger") == main_challenger and alias_version("champion") is None  # the main line's


def test_an_added_line_is_refused_and_promoted_by_its_own_gates_on_its_own_bars(pipeline, database):
    main_decisions = len(decisions(database))
    refused = _run(pipeline, "promotion_job_5m_h15", "challenger_evaluation", {**PERMISSIVE, "max_latency_ms": 1e-6})
    assert refused.success
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in refused.get_asset_check_evaluations()}
    assert checks[("line_5m_h15/challenger_evaluation", "latency")] is False
    assert alias_version("champion", name=NAME) is None
    assert [d["decision"] for d in decisions(database, name=NAME)] == ["refused"]

    promoted = _run(pipeline, "promotion_job_5m_h15", "challenger_evaluation", PERMISSIVE)
    meta = _metadata(promoted)
    assert set(meta) == {"line_5m_h15/challenger_evaluation", "line_5m_h15/champion", "line_5m_h15/bento_artifact"}
    assert meta["line_5m_h15/champion"]["champion"] == f"{NAME}/1" and alias_version("champion", name=NAME) == "1"
    # the backtest traded 5-minute bars: every return is stamped on the 5-minute grid
    returns = pd.read_parquet(meta["line_5m_h15/challenger_evaluation"]["returns_path"])
    assert len(returns) and (returns.index.minute % 5 == 0).all() and (returns.index.second == 0).all()
    steps = np.diff(returns.index.asi8)
    assert steps.min() >= 5 * 60 * 10**9
    import bentoml

    bento = bentoml.get(meta["line_5m_h15/bento_artifact"]["bento"])
    assert bento.info.labels["registered_model"] == NAME and bento.info.labels["model_version"] == "1"
    # the main line: no champion, no new decision
    assert alias_version("champion") is None and len(decisions(database)) == main_decisions


def test_an_added_line_rolls_back_under_its_own_name(pipeline, database):
    assert _run(pipeline, "train_job_5m_h15", "lora_model", {"epochs": 1, "baselines": False}).success
    assert _run(pipeline, "promotion_job_5m_h15", "challenger_evaluation", PERMISSIVE).success
    assert (alias_version("champion", name=NAME), alias_version("previous", name=NAME)) == ("2", "1")
    main = pipeline.run("rollback_job", raise_on_error=False)
    assert not main.success  # the main line has nothing to roll back to; the added line is untouched
    assert alias_version("champion", name=NAME) == "2"
    result = pipeline.definitions.resolve_job_def("rollback_job").execute_in_process(
        instance=pipeline.instance, run_config={**QUIET, "ops": {"rollback_champion": {"config": {"model": NAME}}}})
    assert result.success
    assert (alias_version("champion", name=NAME), alias_version("previous", name=NAME)) == ("1", None)
    assert decisions(database, name=NAME)[-1]["decision"] == "rollback"


def test_an_added_line_is_monitored_on_its_own_live_predictions(pipeline, database, tmp_path, monkeypatch):
    """Its champion serves a stored day of 5-minute bars in the service runtime, which logs every
    prediction; its own drift sensor reports on them, outcomes resolve them against the 5-minute
    labels, and its drift_report asset materializes; the main line's sensor sees no champion."""
    import time

    from smc_assets.monitoring import reports_dir
    from smc_assets.partitions import SYMBOLS, split_bar_partition_key
    from smc_core.drift import latest_reports
    from smc_core.registry import TrackingConfig, configure
    from smc_core.serving.replay import replay_stored_day
    from smc_core.serving.runtime import Runtime, ServiceSettings
    from smc_jobs.local import LocalRunner, materialized
    from sensors.drift import build_drift_sensor

    # the runtime reads its registry from the environment, as the service does: the pipeline's home,
    # and no tracking URI another test's dagster-mlflow resource left in this worker's environment
    monkeypatch.setenv("SMC_HOME", str(pipeline.settings.smc_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure(TrackingConfig.from_settings(pipeline.settings))
    champion = alias_version("champion", name=NAME)
    runtime = Runtime(ServiceSettings.from_env({"SMC_DEV_MODE": "1", "MODEL_URI": f"models:/{NAME}@champion"}),
                      database=database).start()
    try:
        days = [split_bar_partition_key(key)[1] for key in pipeline.partitions[-3:-1]]  # the last has no labels yet
        answered, requests = set(), 0
        for day in days:
            report = replay_stored_day(database, "ES", day, lambda payload: runtime.predict_payload(
                payload, time.perf_counter()), timeframe="5m", resampled=True)
            answered, requests = answered | set(report.versions), requests + report.requests
        assert runtime.log.flush(30)
    finally:
        runtime.stop()
    assert answered == {f"{NAME}/{champion}"} and requests == 2 * 276  # every 5-minute bar of two sessions

    instance = DagsterInstance.local_temp(str(tmp_path))
    instance.add_dynamic_partitions(SYMBOLS.name, ["ES"])
    runner = LocalRunner(pipeline.definitions, instance)
    settings = MonitoringSettings(**{**MonitoringSettings.from_env().as_dict(), "drift_window": 400,
                                     "drift_min_rows": 300})
    sensor = build_drift_sensor(settings, reports_dir(str(pipeline.settings.smc_home / "models")), LINE)
    assert sensor.name == "drift_sensor_5m_h15"
    tick = runner.tick(sensor.name, sensor)
    stored = latest_reports(database, f"{NAME}/{champion}", limit=1)
    assert stored and stored[0]["current_rows"] == 400, tick.skip_message
    assert all(r.tags.get("smc/model_line") == NAME for r in tick.run_requests)  # a drift retrains this line only
    main = runner.tick("drift_sensor")
    assert not main.run_requests and "no champion of smc-lora" in main.skip_message

    monkeypatch.setenv("SMC_DRIFT_WINDOW", "400")  # the asset reads the settings; two days are 552 predictions
    monkeypatch.setenv("SMC_DRIFT_MIN_ROWS", "300")
    monitored = runner.run("monitoring_job")  # the main line serves nothing: observed as not measured, no failure
    meta = materialized(monitored)
    observed = [e.event_specific_data.asset_observation for e in monitored.all_events
                if e.event_type_value == "ASSET_OBSERVATION"]
    assert "drift_report" not in meta and [o.asset_key.to_user_string() for o in observed] == ["drift_report"]
    assert "smc-lora has no version with the alias 'champion'" in observed[0].metadata["not_measured"].value
    assert meta["line_5m_h15/drift_report"]["model_version"] == f"{NAME}/{champion}"
    assert meta["outcomes"]["resolved"] > 0
    with database.connection() as conn:
        resolved = conn.execute("SELECT count(*) FROM prediction_outcomes o JOIN predictions p USING (ts, request_id, "
                                "shadow) WHERE p.model_version = %s AND p.timeframe = '5m'",
                                (f"{NAME}/{champion}",)).fetchone()[0]
    assert resolved == meta["outcomes"]["resolved"]


def test_the_retrain_chain_starts_every_lines_retrain_with_its_own_config():
    settings = MonitoringSettings(**{**MonitoringSettings.from_env().as_dict(), "retrain_days": 7, "retrain_config": {
        "ops": {"lora_model": {"config": {"epochs": 2}}, "challenger_evaluation": {"config": {"folds": 2}}}}})
    assert retrain_run_config(settings) == {"ops": {"lora_model": {"config": {"epochs": 2, "recent_days": 7}},
                                                    "challenger_evaluation": {"config": {"folds": 2}}}}
    assert retrain_run_config(settings, LINE) == {"ops": {
        "line_5m_h15__lora_model": {"config": {"epochs": 2, "recent_days": 7}},
        "line_5m_h15__challenger_evaluation": {"config": {"folds": 2}}}}
    instance = DagsterInstance.ephemeral()
    from dagster import job, op

    @op
    def noop():
        pass

    @job(name=REFRESH_JOB)
    def refresh():
        noop()

    refresh.execute_in_process(instance=instance, tags={EPISODE_TAG: "drift:1"})
    from smc_jobs.definitions import line_assets, line_jobs, retrain_job

    added = line_jobs(LINE, *line_assets(LINE)[:5]).retrain
    sensor = build_retrain_chain_sensor(settings, (MAIN_LINE, LINE), [retrain_job, added])
    requests = sensor.evaluate_tick(build_sensor_context(instance=instance)).run_requests
    assert [(r.job_name, r.run_key) for r in requests] == [("retrain_job", "drift:1"),
                                                          ("retrain_job_5m_h15", "drift:1|5m_h15")]
    assert requests[1].run_config["ops"]["line_5m_h15__lora_model"]["config"]["recent_days"] == 7
    assert all(isinstance(r, RunRequest) for r in requests)
    # an episode a line's own monitoring started (drift_sensor_5m_h15) retrains that line only
    refresh.execute_in_process(instance=instance, tags={EPISODE_TAG: "drift:2", LINE_TAG: NAME})
    context = build_sensor_context(instance=instance, cursor=json.dumps(["drift:1"]))
    requests = sensor.evaluate_tick(context).run_requests
    assert [(r.job_name, r.run_key) for r in requests] == [("retrain_job_5m_h15", "drift:2|5m_h15")]


def test_rolling_back_an_unknown_line_names_the_lines_there_are(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "SMC_HOME": str(tmp_path), "SMC_MODEL_LINES": "5m"}
    done = subprocess.run([sys.executable, "-m", "smc_jobs.cli", "rollback", "--model", "smc-lora-30m-h1", "--no-wait"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "--model smc-lora-30m-h1: no such model line; the lines are smc-lora, smc-lora-5m-h15" in done.stderr
