"""base_model and lora_model through the real jobs: MLflow run via dagster-mlflow, a registered
version with the alias ``challenger``, a verified package with lineage, and clear refusals."""

from __future__ import annotations

import re
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from smc_core.dataset import load_training_data
from smc_core.features import CATALOGUE
from smc_core.model import Predictor, load_package
from smc_core.model.encoding import encode, windows
from smc_core.registry import EXPERIMENT, MODEL_NAME, alias_version, package_path
from pipeline_setup import SYMBOL, run_config, trained_pipeline

warnings.filterwarnings("ignore", category=Warning, module="dagster_mlflow")

DAYS = 6
BASE_CONFIG = {"epochs": 2}
LORA_CONFIG = {"epochs": 3, "patience": 2}


@pytest.fixture(scope="module")
def pipeline(database, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        trained = trained_pipeline(database.url, tmp_path_factory.mktemp("smc_home"), DAYS, BASE_CONFIG,
                                   LORA_CONFIG)
    return {"settings": trained.settings, "definitions": trained.definitions, "instance": trained.instance,
            "base": trained.base, "train": trained.train, "partitions": trained.partitions}


def _metadata(result, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert len(events) == 1
    return {k: v.value for k, v in events[0].materialization.metadata.items()}


def test_training_runs_are_tracked_in_mlflow_through_dagster_mlflow(pipeline):
    assert pipeline["base"].success and pipeline["train"].success
    meta = _metadata(pipeline["train"], "lora_model")
    run = mlflow.MlflowClient().get_run(meta["mlflow_run_id"])
    # dagster-mlflow opened the run for this Dagster run, and its hook closed it
    assert run.data.tags["dagster_run_id"] == pipeline["train"].run_id
    assert run.info.status == "FINISHED"
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's model-training view
    # a name that says what was trained, what started it and what it became
    assert run.info.run_name == f"lora 1m h15 · manual · v{meta['model_version'].split('/')[1]}"
    assert run.data.params["epochs"] == "3" and run.data.params["horizon"] == "h15_u1.5_d1.5"
    for model in ("lora", "scratch", "lightgbm", "prior"):
        assert f"{model}_log_loss" in run.data.metrics
    assert {"ece_before", "ece_after", "temperature"} <= set(run.data.metrics)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "lora_valid_loss")
    assert [m.step for m in history] == list(range(1, len(history) + 1)) and len(history) >= 2
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "calibration")}
    assert artifacts == {"calibration/reliability_before.png", "calibration/reliability_after.png"}
    # the artifact root is the absolute one under SMC_HOME, whatever the cwd was
    assert run.info.artifact_uri.startswith((pipeline["settings"].smc_home / "mlartifacts").as_uri())

    base_meta = _metadata(pipeline["base"], "base_model")
    base_run = mlflow.MlflowClient().get_run(base_meta["mlflow_run_id"])
    assert base_run.data.tags["dagster_run_id"] == pipeline["base"].run_id and base_run.info.status == "FINISHED"
    assert base_run.info.run_name == "base 1m · manual"


def test_the_package_is_also_an_mlflow_model_giving_the_predictors_probabilities(pipeline, database):
    meta = _metadata(pipeline["train"], "lora_model")
    model = mlflow.pyfunc.load_model(meta["mlflow_model"])
    assert mlflow.MlflowClient().get_logged_model(model.model_id).source_run_id == meta["mlflow_run_id"]
    predictor = Predictor.load(meta["package_path"])
    data = load_training_data(database, [SYMBOL], "1m", *_all_time(), CATALOGUE, "h15_u1.5_d1.5", 20)
    rows = pd.DataFrame(np.nan_to_num(data.rows[-60:]), columns=list(predictor.spec.feature_names))
    served = model.predict(rows)
    assert list(served.columns) == ["long", "short", "skip"] and served.iloc[:19].isna().all().all()
    numeric, categorical = encode(rows.to_numpy(), predictor.spec)
    expected = predictor.predict_proba(*windows(numeric, categorical, np.arange(19, 60), 20))
    assert np.array_equal(served.iloc[19:].to_numpy(), expected)
    # and each window scored alone as the service does, to float32 rounding
    assert np.allclose(served.iloc[-1].to_numpy(), predictor.predict_rows(rows.iloc[-20:]), atol=1e-6)
    with pytest.raises(Exception, match="(?i)schema|column"):
        model.predict(rows.drop(columns=rows.columns[0]))


def test_the_package_is_registered_as_challenger_with_lineage(pipeline, database):
    meta = _metadata(pipeline["train"], "lora_model")
    name, version = meta["model_version"].split("/")
    assert name == MODEL_NAME and alias_version("challenger") == version
    downloaded = load_package(package_path(version))  # verifies the manifest of the MLflow copy
    lineage = downloaded.lineage
    assert lineage["model_version"] == version and lineage["mlflow_run_id"] == meta["mlflow_run_id"]
    assert lineage["dagster_run_id"] == pipeline["train"].run_id
    assert lineage["data"]["partitions"] == sorted(str(k) for k in pipeline["partitions"])
    assert lineage["data"]["feature_set_version"] == CATALOGUE.version
    assert lineage["data"]["valid_seen_by_base"] == 0
    assert lineage["base"]["dagster_run_id"] == pipeline["base"].run_id
    assert len(lineage["code"]["git_commit"] or "") == 40
    assert downloaded.has_adapter

    # the MLflow copy and the local package serve identical probabilities on stored features
    data = load_training_data(database, [SYMBOL], "1m", *_all_time(), CATALOGUE, "h15_u1.5_d1.5", 20)
    numeric, categorical = encode(np.nan_to_num(data.rows), downloaded.spec)
    batch = windows(numeric, categorical, data.ends[-64:], 20)
    local = Predictor.load(meta["package_path"]).predict_proba(*batch)
    assert np.array_equal(local, Predictor(downloaded).predict_proba(*batch))
    assert np.allclose(local.sum(axis=1), 1.0)


def test_metadata_shows_calibration_and_baselines_side_by_side(pipeline):
    meta = _metadata(pipeline["train"], "lora_model")
    header = meta["comparison"].splitlines()[0]
    assert header == "| metric | lora | scratch | lightgbm | prior |"
    assert "| trade_precision |" in meta["comparison"] and "| macro_f1 |" in meta["comparison"]
    # the inline chart is short enough for the asset page to render at once; the full PNGs a click away
    assert meta["reliability"].count("data:image/svg+xml,") == 1 and len(meta["reliability"]) < 1000
    assert meta["reliability_chart"].count("data:image/png;base64,") == 2
    shown = [f"{key}: {value}" for key, value in meta.items()]
    assert not [text for text in shown if re.search(r"\bnan\b", text, re.IGNORECASE)]  # undefined says why
    assert 0 <= meta["ece_after"] <= 1 and meta["temperature"] > 0
    assert meta["split"]["windows_valid"] > 0 and meta["split"]["purged"] >= 0
    assert "| lora | 1 |" in meta["history"] and "| scratch | 1 |" in meta["history"]
    # which features carry the model (permutation on validation windows) and the baseline (gain)
    assert meta["feature_importance"].startswith("| rank | feature | rise in validation log loss |")
    assert "No earlier model's importance to compare with (the champion)." in meta["feature_importance"]
    assert meta["lightgbm_gain"].startswith("| rank | feature | total gain |")
    assert meta["feature_importance_chart"].count("data:image/png;base64,") == 1
    run = mlflow.MlflowClient().get_run(meta["mlflow_run_id"])
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/feature_importance/permutation.json")
    assert len(logged["features"]) == len(CATALOGUE.names) and logged["method"] == "permutation"
    top = logged["features"][0]
    assert run.data.metrics[f"importance.{top['name']}"] == pytest.approx(top["value"])
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "feature_importance")} == {
        "feature_importance/permutation.json", "feature_importance/lightgbm_gain.json",
        "feature_importance/permutation.png"}


def test_a_second_run_moves_the_challenger_alias(pipeline):
    before = alias_version("challenger")
    result = pipeline["definitions"].resolve_job_def("train_job").execute_in_process(
        instance=pipeline["instance"], run_config=run_config("lora_model", {**LORA_CONFIG, "epochs": 1,
                                                                              "baselines": False}))
    assert result.success
    assert int(alias_version("challenger")) == int(before) + 1


@pytest.mark.parametrize("asset, config, message", [
    ("base_model", {"checkpoint": "/nowhere/qwen"}, "backbone checkpoint /nowhere/qwen does not exist"),
    ("lora_model", {"symbols": ["NQ"]}, "no feature rows for NQ"),
    ("lora_model", {"start": "2024-03-05T15:00:00", "end": "2024-03-05T17:00:00"}, "too little data for the split"),
    ("lora_model", {"start": "yesterday-ish"}, "start 'yesterday-ish' is not an ISO date or time"),
    ("lora_model", {"importance_repeats": 0}, "importance_repeats >= 1 (got 0)"),
])
def test_bad_input_fails_the_run_with_a_clear_message_before_training(pipeline, asset, config, message):
    job = "base_model_job" if asset == "base_model" else "train_job"
    versions_before = alias_version("challenger")
    result = pipeline["definitions"].resolve_job_def(job).execute_in_process(
        instance=pipeline["instance"], run_config=run_config(asset, config), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert message in str(failure.step_failure_data.error.message) + str(failure.step_failure_data.user_failure_data)
    assert alias_version("challenger") == versions_before


def _all_time():
    import pandas as pd

    return pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC")
