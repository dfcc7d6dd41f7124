"""The promotion wiring through the real jobs: gates as checks on challenger_evaluation, champion
moved only when all pass, a refusal a successful run recorded everywhere (Dagster, MLflow, the
registry, model_promotions, an info alert), a broken champion failing its gate without crashing
the run, and rollback_job.

Whether a real edge passes and noise fails the default thresholds is tested below Dagster
(test_promotion.py, on larger synthetic markets); here thresholds are set to force one
outcome or the other, because what is under test is what the pipeline does with a verdict.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import re

import mlflow
import pytest
from pipeline_setup import QUIET, trained_pipeline

from smc_core.model.package import load_package
from smc_core.alerts import recent_alerts
from smc_core.promotion import decisions
from smc_core.registry import alias_version

warnings.filterwarnings("ignore", category=Warning, module="dagster_mlflow")

FAST = {"folds": 2, "base_epochs": 1, "min_trades": 0}
PERMISSIVE = {**FAST, "min_dsr": 0.0, "max_pbo": 1.0, "max_spa_pvalue": 1.0, "min_sharpe_improvement": -100.0,
              "max_drawdown_worsening": 100.0, "max_ece": 1.0, "max_latency_ms": 1000.0}


@pytest.fixture(scope="module")
def pipeline(database, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return trained_pipeline(database.url, tmp_path_factory.mktemp("smc_home"), days=5,
                                base_config={"epochs": 1}, lora_config={"epochs": 2, "patience": 1,
                                                                        "baselines": False})


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def _observations(result, asset: str) -> list[dict]:
    return [{k: v.value for k, v in e.event_specific_data.asset_observation.metadata.items()}
            for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
            and e.event_specific_data.asset_observation.asset_key.to_user_string() == asset]


def _metadata(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def _no_nan(metadata: dict) -> None:
    for asset, values in metadata.items():
        for key, value in values.items():
            assert not re.search(r"\bnan\b", str(value), re.IGNORECASE), f"{asset}.{key} shows nan: {value}"


def assert_refused_everywhere(result, database, version: str, gate: str, champion: str | None) -> None:
    """A refusal: a successful run, the alias unmoved, no Bento, and 'refused' naming the gate in
    the Dagster metadata and checks, the MLflow run, the registry version, model_promotions, alerts."""
    assert result.success and not any(e.event_type_value == "PIPELINE_FAILURE" for e in result.all_events)
    assert alias_version("champion") == champion
    assert "bento_artifact" not in _materialized(result) and "champion" not in _materialized(result)
    assert "bento_artifact" in {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == gate)
    assert not check.passed and check.description.startswith("FAIL: ") and check.severity.value == "WARN"
    evaluation = _metadata(result)["challenger_evaluation"]
    assert (evaluation["verdict"], evaluation["failed_gates"]) == ("refused", gate)
    observed = _observations(result, "champion")[-1]
    assert (observed["decision"], observed["failed_gates"], observed["challenger"]) == ("refused", gate,
                                                                                       f"smc-lora/{version}")
    assert check.description.removeprefix("FAIL: ") in observed["reason"]  # the gate's own reason, verbatim
    client = mlflow.MlflowClient()
    model_version = client.get_model_version("smc-lora", version)
    assert model_version.description.startswith("Refused ") and gate in model_version.description
    assert (model_version.tags["smc.decision"], model_version.tags["smc.failed_gates"]) == ("refused", gate)
    run = client.get_run(model_version.run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["smc.decision"], run.data.tags["smc.failed_gates"]) == ("refused", gate)
    last = decisions(database)[-1]
    assert (last["version"], last["decision"], last["dagster_run_id"]) == (version, "refused", result.run_id)
    assert gate in last["reason"] and len(last["gates"]) == 6 and last["champion_after"] == champion
    alert = recent_alerts(database, "promotion_refused")[0]
    assert alert["severity"] == "info" and alert["subject"] == f"smc-lora/{version} refused"
    assert alert["details"]["failed_gates"] == [gate] and alert["details"]["dagster_run_id"] == result.run_id
    assert not recent_alerts(database, "run_failure")
    _no_nan(_metadata(result))


def test_a_refusal_is_a_successful_run_recorded_everywhere(pipeline, database):
    challenger = alias_version("challenger")
    result = pipeline.run("promotion_job", "challenger_evaluation", {**PERMISSIVE, "max_latency_ms": 1e-6})
    checks = _checks(result)
    assert set(checks) == {"deflated_sharpe", "pbo", "spa", "versus_champion", "calibration", "latency"}
    assert [name for name, passed in checks.items() if not passed] == ["latency"]
    assert_refused_everywhere(result, database, challenger, "latency", champion=None)


def test_a_retrain_refused_in_the_same_run_finishes_its_mlflow_run(pipeline, database):
    """retrain_job opens the MLflow run (lora_model) and a refusal skips the step whose hook would
    end it: the run must still end FINISHED, not stay RUNNING or turn FAILED."""
    result = pipeline.definitions.resolve_job_def("retrain_job").execute_in_process(
        instance=pipeline.instance, run_config={**QUIET, "ops": {
            "lora_model": {"config": {"epochs": 1, "baselines": False}},
            "challenger_evaluation": {"config": {**PERMISSIVE, "max_ece": 0.0}}}})
    challenger = alias_version("challenger")
    assert _metadata(result)["lora_model"]["model_version"] == f"smc-lora/{challenger}"
    assert_refused_everywhere(result, database, challenger, "calibration", champion=None)
    assert mlflow.active_run() is None  # nothing left open for the next run in this process


def test_passing_gates_promote_and_a_second_model_keeps_the_first_as_previous(pipeline, database):
    first = alias_version("challenger")  # refused above at stricter thresholds
    refusals = len(recent_alerts(database, "promotion_refused"))
    result = pipeline.run("promotion_job", "challenger_evaluation", PERMISSIVE)
    assert result.success and all(_checks(result).values())
    assert _materialized(result) == {"challenger_evaluation", "champion", "bento_artifact"}
    assert alias_version("champion") == first
    tags = mlflow.MlflowClient().get_model_version("smc-lora", first).tags
    assert float(tags["entry_threshold"]) in (0.55, 0.6, 0.65, 0.7, 0.75)
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert "| gate | verdict |" in meta["challenger_evaluation"]["gates"].value
    # the equity curve renders on the asset page (short markdown), the full chart one click away
    inline = meta["challenger_evaluation"]["equity"].value
    assert "data:image/svg+xml," in inline and len(inline) < 1000
    assert "data:image/png;base64," in meta["challenger_evaluation"]["equity_chart"].value
    assert Path(meta["challenger_evaluation"]["returns_path"].value).is_file()
    assert meta["champion"]["decision"].value == "promoted"
    _no_nan(_metadata(result))
    promoted = mlflow.MlflowClient().get_model_version("smc-lora", first)
    assert promoted.description.startswith("Promoted ") and promoted.tags["smc.decision"] == "promoted"
    assert mlflow.MlflowClient().get_run(promoted.run_id).data.tags["smc.decision"] == "promoted"
    assert len(recent_alerts(database, "promotion_refused")) == refusals
    # the Bento packs exactly the promoted version, with its lineage as labels
    import bentoml

    bento = bentoml.get(meta["bento_artifact"]["bento"].value)
    assert bento.info.labels["model_version"] == first and bento.info.labels["registered_model"] == "smc-lora"
    packed = bentoml.models.get(meta["bento_artifact"]["model_tag"].value)
    assert packed.info.labels["model_version"] == first
    load_package(Path(packed.path_of("package")))  # what the Bento's service loads: verified, nothing extra

    trained = pipeline.run("train_job", "lora_model", {"epochs": 1, "baselines": False})
    assert trained.success
    second = alias_version("challenger")
    assert second != first
    # its feature importance beside the champion's: ranks then and now, what rose and what fell
    importance = next(e.materialization.metadata for e in trained.get_asset_materialization_events()
                      if e.asset_key.to_user_string() == "lora_model")["feature_importance"].value
    assert f"| rank in the champion (v{first}) |" in importance
    assert f"**rose** since the champion (v{first}): " in importance and f"**fell** since the champion (v{first}): " in importance
    result = pipeline.run("promotion_job", "challenger_evaluation", PERMISSIVE)
    assert result.success
    versus = next(e for e in result.get_asset_check_evaluations() if e.check_name == "versus_champion")
    assert "vs champion" in versus.metadata["reason"].value  # compared with the first model this time
    assert (alias_version("champion"), alias_version("previous")) == (second, first)
    assert [d["decision"] for d in decisions(database)][-2:] == ["promoted", "promoted"]


def test_rollback_job_restores_the_previous_champion(pipeline, database):
    champion, previous = alias_version("champion"), alias_version("previous")
    assert previous is not None
    result = pipeline.run("rollback_job")
    assert result.success
    assert alias_version("champion") == previous and alias_version("previous") is None
    last = decisions(database)[-1]
    assert (last["decision"], last["champion_before"], last["champion_after"]) == ("rollback", champion, previous)
    again = pipeline.run("rollback_job", raise_on_error=False)
    assert not again.success  # nothing left to roll back to: a clear failure, aliases untouched
    assert alias_version("champion") == previous


def test_a_champion_whose_package_is_missing_fails_its_gate_not_the_run(pipeline, database):
    champion = alias_version("champion")
    source = mlflow.MlflowClient().get_model_version("smc-lora", champion).source
    shutil.rmtree(Path(source.removeprefix("file://")))
    assert pipeline.run("train_job", "lora_model", {"epochs": 1, "baselines": False}).success
    result = pipeline.run("promotion_job", "challenger_evaluation", PERMISSIVE, raise_on_error=False)
    checks = _checks(result)
    assert checks["versus_champion"] is False and "champion" not in _materialized(result)
    assert alias_version("champion") == champion
    assert "cannot be loaded" in decisions(database)[-1]["gates"][3]["reason"]
