"""The loop closed end to end on real parts: a champion serves from a real BentoML server and
logs its predictions; the market changes (volatility triples and an SMC edge appears); the
drift sensor fires; the refresh runs and retrain_job (LoRA on the current base, walk-forward
gates at their default thresholds, promotion, Bento) execute as requested; the live service
answers with the new champion by itself; ``smc rollback`` moves the alias back and measures
until every response carries the previous version. Then what the Dagster UI shows of it, read
through the UI's own GraphQL schema: the ticks of the sensors the demo drives, the runs they
launched with their tags, and the monitoring assets the demo materializes after the drift."""

from __future__ import annotations

import os
import time
from datetime import date

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from dagster import DagsterInstance
from serving_setup import KEY, Server, tiny_package

from smc_core.calendar import CME_EQUITY
from smc_core.monitoring import MonitoringSettings
from smc_core.promotion import decisions, promote
from smc_core.registry import TrackingConfig, alias_version, configure, register_package
from smc_core.serving.replay import replay_stored_day
from smc_core.settings import Settings
from smc_core.store import load_bars
from smc_core.synthetic import Instrument, SyntheticConfig, write_synthetic
from smc_jobs.demo import load_landing_files, retrain_config, run_monitoring
from smc_jobs.local import LocalRunner, materialized

SYMBOLS = {"ES": 3, "NQ": 4}
QUIET_MARKET = [SyntheticConfig(days=10, seed=seed + 20, start=date(2024, 1, 2), edge="none",
                                instrument=Instrument(symbol=symbol)) for symbol, seed in SYMBOLS.items()]
NEW_MARKET = [SyntheticConfig(days=30, seed=seed, start=date(2024, 1, 16), edge="smc", edge_strength=1.0,
                              annual_vol=0.5, instrument=Instrument(symbol=symbol)) for symbol, seed in SYMBOLS.items()]
MONITORING = MonitoringSettings(retrain_days=30, retrain_config=retrain_config())  # the demo's training budget


@pytest.fixture(scope="module")
def system(database, tmp_path_factory):
    from smc_jobs.definitions import build_definitions

    home = tmp_path_factory.mktemp("loop_e2e")
    env = {"SMC_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "DATABASE_URL": database.url, "SMC_PARTITION_START": "2024-01-01", "BENTOML_HOME": str(home / "bentoml")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    settings = Settings.from_env()
    configure(TrackingConfig.from_settings(settings))
    (home / "dagster").mkdir()
    runner = LocalRunner(build_definitions(settings, MONITORING), DagsterInstance.local_temp(str(home / "dagster")))
    server = None
    try:
        for config in QUIET_MARKET:
            write_synthetic(config, settings.landing_dir)
        assert all(row[1] for row in load_landing_files(runner)[1])
        runner.run("base_model_job", {"ops": {"base_model": {"config": {"epochs": 2}}}})
        quiet_bars = load_bars(database, "ES", "1m", pd.Timestamp("2024-01-01", tz="UTC"),
                               pd.Timestamp("2024-01-16", tz="UTC"))
        package = tiny_package(home / "first", bars_frame=quiet_bars)  # the model in production: no edge to find
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(package), "model_package")
            first = register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package", alias=None)
        promote(database, first, "in production before the test")
        # the first model learnt ES only; production serves ES and NQ, so the operator says so (ALLOWED_SYMBOLS)
        server = Server({"DATABASE_URL": database.url, "MODEL_POLL_SECONDS": "0.5", "ALLOWED_SYMBOLS": "ES,NQ"},
                        home).wait()
        yield runner, server, first, settings
    finally:
        if server is not None:
            server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
def test_drift_retrains_through_the_gates_and_the_service_follows_then_rolls_back(system, database):
    runner, server, first, settings = system
    for config in NEW_MARKET:
        write_synthetic(config, settings.landing_dir)
    assert all(row[1] for row in load_landing_files(runner)[1])
    days = CME_EQUITY.trading_days(date(2024, 1, 16), date(2024, 3, 31))[:30]
    sys_path_client()
    from smc_client import SmcClient

    with SmcClient(server.url, KEY, timeout=5) as client:  # the champion answers the new market, logging each call
        for day in days[-2:]:
            replay_stored_day(database, "ES", day, client.predict_payload)
    time.sleep(1.5)  # the prediction log's writer flushes in the background

    drift = runner.tick("drift_sensor")
    refresh = drift.run_requests
    assert refresh, drift.skip_message
    assert {r.partition_key.keys_by_dimension["symbol"] for r in refresh} == set(SYMBOLS)
    assert refresh[0].tags["smc/trigger"] == "drift" and "features drifted" in refresh[0].tags["smc/reason"]
    for request in refresh:
        runner.execute(request)
    monitoring = run_monitoring(runner, None, refresh[0].tags["smc/reason"])  # as the demo does
    assert monitoring.success, monitoring.all_events[-1].message
    (retrain,) = runner.tick("retrain_chain_sensor").run_requests
    assert retrain.job_name == "retrain_job" and retrain.tags["smc/retrain_episode"] == refresh[0].tags[
        "smc/retrain_episode"]
    result = runner.execute(retrain)
    assets = materialized(result)
    new = alias_version("champion")
    assert new != first and assets["champion"]["champion"] == f"smc-lora/{new}", assets.get("challenger_evaluation")
    assert all(check.passed for check in result.get_asset_check_evaluations())
    promoted = decisions(database)[-1]
    assert (promoted["decision"], promoted["version"], promoted["champion_before"]) == ("promoted", new, first)
    assert assets["bento_artifact"]["model_version"] == f"smc-lora/{new}"

    payload = server_payload(database)
    deadline = time.monotonic() + 10
    while server.predict(payload).json()["model_version"] != f"smc-lora/{new}":  # no reload call: it follows
        assert time.monotonic() < deadline, "the service did not pick up the new champion"
        time.sleep(0.2)

    from smc_jobs.cli import cli

    outcome = CliRunner().invoke(cli, ["rollback", "--url", server.url, "--api-key", KEY, "--timeout", "30"],
                                 catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    assert f"smc-lora/{new} → smc-lora/{first}" in outcome.output
    assert f"every response carries smc-lora/{first}" in outcome.output and ", 0 failed" in outcome.output
    seconds = float(outcome.output.split(f"every response carries smc-lora/{first} ")[1].split(" s ")[0])
    assert seconds < 5.0, outcome.output  # DESIGN §8: rollback ≤ 5 s, 0 failed requests
    assert server.predict(payload).json()["model_version"] == f"smc-lora/{first}"


SENSOR_QUERY = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 50) { status runIds runKeys skipReason } } }
    ... on PythonError { message }
  }
}"""
RUNS_QUERY = """
query SensorRuns($filter: RunsFilter!) {
  runsOrError(filter: $filter) { ... on Runs { results { runId jobName status tags { key value } } } }
}"""


@pytest.mark.slow
def test_the_loop_is_visible_in_the_dagster_ui(system):
    """The UI's GraphQL, on the code location workspace.yaml declares, finds a recorded tick for
    every sensor the demo drives and "Launched by <sensor>" (the sensor tag) on every run they
    started; the monitoring assets are materialized."""
    from dagster import AssetKey

    runner = system[0]
    with ui_context(runner.instance) as (context, location):
        seen = {}
        for name in ("landing_file_sensor", "drift_sensor", "retrain_chain_sensor"):
            sensor = graphql(context, SENSOR_QUERY, {"selector": {
                "repositoryLocationName": location, "repositoryName": "__repository__", "sensorName": name}})
            ticks = sensor["sensorOrError"]["sensorState"]["ticks"]
            runs = graphql(context, RUNS_QUERY, {"filter": {"tags": [{"key": "dagster/sensor_name", "value": name}]}}
                           )["runsOrError"]["results"]
            launched = [run_id for tick in ticks for run_id in tick["runIds"]]
            assert ticks and {tick["status"] for tick in ticks} <= {"SUCCESS", "SKIPPED"}, (name, ticks)
            assert sorted(launched) == sorted(run["runId"] for run in runs) and runs, (name, ticks, runs)
            assert all(tick["runKeys"] for tick in ticks if tick["status"] == "SUCCESS")
            seen[name] = [{tag["key"]: tag["value"] for tag in run["tags"]} for run in runs]
    assert len(seen["landing_file_sensor"]) == 2 * (QUIET_MARKET[0].days + NEW_MARKET[0].days)
    assert all(tags["smc/trigger"] == "landing_file" for tags in seen["landing_file_sensor"])
    (retrain,) = seen["retrain_chain_sensor"]
    assert retrain["smc/trigger"] == "drift" and retrain["dagster/run_key"] == retrain["smc/retrain_episode"]
    assert all(tags["smc/reason"] == retrain["smc/reason"] and tags["smc/trigger"] == "drift"
               for tags in seen["drift_sensor"]) and len(seen["drift_sensor"]) == 2 * MONITORING.refresh_days
    for asset in ("outcomes", "drift_report"):
        event = runner.instance.get_latest_materialization_event(AssetKey(asset))
        assert event is not None, asset
    report = runner.instance.get_latest_materialization_event(AssetKey("drift_report")).asset_materialization
    assert os.path.exists(report.metadata["report_html"].value) and report.metadata["drifted"].value


def ui_context(instance):
    """A workspace like the one ``make ui`` serves (same code location name, from workspace.yaml),
    loaded in process."""
    import sys
    from contextlib import contextmanager

    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget, WorkspaceFileTarget

    from smc_jobs.local import WORKSPACE

    @contextmanager
    def opened():
        (declared,) = WorkspaceFileTarget(paths=[str(WORKSPACE)]).create_origins()
        origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(
            executable_path=sys.executable, module_name="smc_jobs.definitions", attribute="defs",
            working_directory=str(WORKSPACE.parent)), location_name=declared.location_name)
        with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget([origin])) as process:
            yield process.create_request_context(), declared.location_name

    return opened()


def graphql(context, query: str, variables: dict) -> dict:
    from dagster_graphql.test.utils import execute_dagster_graphql

    result = execute_dagster_graphql(context, query, variables)
    assert not result.errors, result.errors
    return result.data


def sys_path_client() -> None:
    import sys
    from pathlib import Path

    client_dir = str(Path(__file__).resolve().parent.parent / "bento" / "clients" / "python")
    if client_dir not in sys.path:
        sys.path.insert(0, client_dir)


def server_payload(database) -> dict:
    from smc_core.serving.replay import request_payload

    bars = load_bars(database, "NQ", "1m", pd.Timestamp("2024-02-20", tz="UTC"), pd.Timestamp("2024-02-21", tz="UTC"))
    return request_payload(bars.iloc[100:149], "NQ", "1m")
