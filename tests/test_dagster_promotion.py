"""The promotion wiring through the real jobs: gates as blocking checks on challenger_evaluation,
champion moved only when all pass, every decision recorded, a broken champion failing its gate
without crashing the run, and rollback_job.

Whether a real edge passes and noise fails the default thresholds is tested below Dagster
(test_promotion.py, on larger synthetic markets); here thresholds are set to force one
outcome or the other, because what is under test is what the pipeline does with a verdict.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import mlflow
import pytest
from pipeline_setup import trained_pipeline

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


def test_a_failing_gate_blocks_the_champion_in_the_same_run(pipeline, database):
    challenger = alias_version("challenger")
    result = pipeline.run("promotion_job", "challenger_evaluation", {**PERMISSIVE, "max_latency_ms": 1e-6},
                          raise_on_error=False)
    checks = _checks(result)
    assert set(checks) == {"deflated_sharpe", "pbo", "spa", "versus_champion", "calibration", "latency"}
    assert checks["latency"] is False
    assert _materialized(result) == {"challenger_evaluation"}  # champion never ran
    assert alias_version("champion") is None
    last = decisions(database)[-1]
    assert (last["version"], last["decision"], last["dagster_run_id"]) == (challenger, "refused", result.run_id)
    assert "latency" in last["reason"] and len(last["gates"]) == 6


def test_passing_gates_promote_and_a_second_model_keeps_the_first_as_previous(pipeline, database):
    first = alias_version("challenger")
    result = pipeline.run("promotion_job", "challenger_evaluation", PERMISSIVE)
    assert result.success and all(_checks(result).values())
    assert _materialized(result) == {"challenger_evaluation", "champion", "bento_artifact"}
    assert alias_version("champion") == first
    tags = mlflow.MlflowClient().get_model_version("smc-lora", first).tags
    assert float(tags["entry_threshold"]) in (0.55, 0.6, 0.65, 0.7, 0.75)
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert "| gate | verdict |" in meta["challenger_evaluation"]["gates"].value
    assert "data:image/png;base64," in meta["challenger_evaluation"]["equity"].value
    assert Path(meta["challenger_evaluation"]["returns_path"].value).is_file()
    # the Bento packs exactly the promoted version, with its lineage as labels
    import bentoml

    bento = bentoml.get(meta["bento_artifact"]["bento"].value)
    assert bento.info.labels["model_version"] == first and bento.info.labels["registered_model"] == "smc-lora"
    packed = bentoml.models.get(meta["bento_artifact"]["model_tag"].value)
    assert (Path(packed.path) / "manifest.json").is_file() and packed.info.labels["model_version"] == first

    assert pipeline.run("train_job", "lora_model", {"epochs": 1, "baselines": False}).success
    second = alias_version("challenger")
    assert second != first
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
