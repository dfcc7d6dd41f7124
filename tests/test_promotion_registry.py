"""Promotion decisions against a real registry and database: aliases move only on a pass,
every decision is recorded (a refusal also in the registry, on the MLflow run and as an info
alert), rollback restores the previous champion once, trials accumulate for the DSR, and gates
fail with a reason on unusable input."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from smc_core.evaluation.backtest import BacktestResult, InstrumentSpec
from smc_core.evaluation.gates import Champion, GateResult, evaluate_gates
from smc_core.alerts import recent_alerts
from smc_core.promotion import (PromotionError, decisions, judge, promote, record_trials, refuse, rollback,
                                trial_sharpes)
from smc_core.registry import TrackingConfig, alias_version, configure, register_package

GATES = [GateResult("deflated_sharpe", True, 0.97, 0.95, "DSR 0.970 > 0.95").as_dict(),
         GateResult("latency", False, 9.0, 5.0, "p50 9.0 > 5.0").as_dict()]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A fresh MLflow registry with three registered versions (their content is not needed here)."""
    home = tmp_path_factory.mktemp("mlflow")
    configure(TrackingConfig(f"sqlite:///{home / 'mlflow.db'}", (home / "artifacts").as_uri()))
    versions = []
    for _ in range(3):
        with mlflow.start_run() as run:
            versions.append(register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package"))
    return versions


def test_aliases_move_only_on_a_pass_and_every_decision_is_recorded(database, registry):
    refused, promoted = registry[0], registry[1]
    refuse(database, refused, "failed gates: latency", gates=GATES, dagster_run_id="run-a")
    assert alias_version("champion") is None
    promote(database, promoted, "all gates passed", entry_threshold=0.65, gates=GATES[:1], dagster_run_id="run-b")
    assert alias_version("champion") == promoted and alias_version("previous") is None
    rows = decisions(database)
    assert [(r["version"], r["decision"], r["champion_after"]) for r in rows[-2:]] == [
        (refused, "refused", None), (promoted, "promoted", promoted)]
    assert rows[-1]["dagster_run_id"] == "run-b" and rows[-1]["gates"][0]["name"] == "deflated_sharpe"
    assert mlflow.MlflowClient().get_model_version("smc-lora", promoted).tags["entry_threshold"] == "0.65"


def test_a_refusal_is_written_where_people_look(database, registry):
    refused = registry[0]
    client = mlflow.MlflowClient()
    alert = refuse(database, refused, "failed gates: latency: p50 9.0 > 5.0", gates=GATES, failed=("latency",),
                   dagster_run_id="run-c")
    version = client.get_model_version("smc-lora", refused)
    assert version.description.startswith("Refused ") and "by Dagster run run-c: failed gates: latency" in \
        version.description
    assert version.tags["smc.decision"] == "refused" and version.tags["smc.failed_gates"] == "latency"
    run = client.get_run(version.run_id)
    assert run.data.tags["smc.decision"] == "refused" and "p50 9.0 > 5.0" in run.data.tags["smc.decision_reason"]
    stored = recent_alerts(database, "promotion_refused")[0]
    assert (stored["id"], stored["severity"], stored["subject"]) == (alert, "info", f"smc-lora/{refused} refused")
    assert "p50 9.0 > 5.0" in stored["message"] and stored["details"]["failed_gates"] == ["latency"]
    assert decisions(database)[-1]["decision"] == "refused"


def test_the_verdict_needs_every_required_gate_to_have_passed():
    required = ("deflated_sharpe", "latency")
    assert judge([GATES[0], {**GATES[1], "passed": True}], required).passed
    failing = judge(GATES, required)
    assert not failing.passed and failing.failed == {"latency": "p50 9.0 > 5.0"}
    assert failing.reason == "failed gates: latency: p50 9.0 > 5.0"
    missing = judge(GATES[:1], required)  # a gate that never ran does not pass by default
    assert not missing.passed and "not evaluated" in missing.failed["latency"]
    assert not judge([], required).passed


def test_rollback_restores_the_previous_champion_once(database, registry):
    first, second = registry[1], registry[2]
    promote(database, first, "ok")
    promote(database, second, "ok")
    assert (alias_version("champion"), alias_version("previous")) == (second, first)
    assert rollback(database, dagster_run_id="run-r") == (second, first)
    assert alias_version("champion") == first and alias_version("previous") is None
    assert decisions(database)[-1]["decision"] == "rollback"
    with pytest.raises(PromotionError, match="no 'previous' alias to roll back to"):
        rollback(database)


def test_trials_accumulate_across_runs(database):
    record_trials(database, "1", {"threshold=0.5": 0.01, "threshold=0.6": float("nan")}, 1000)
    record_trials(database, "2", {"threshold=0.5": 0.03}, 1000)
    history = trial_sharpes(database)
    assert len(history) == 3 and np.isnan(history[1]) and history[2] == 0.03


def _result(returns, trades: int) -> BacktestResult:
    returns = np.asarray(returns, dtype=float)
    n = len(returns)
    frame = pd.DataFrame({"pnl": np.ones(trades)})
    return BacktestResult(returns * 100_000, np.ones(n, dtype=bool), frame,
                          pd.date_range("2024-01-02", periods=n, freq="min").to_numpy(),
                          np.repeat(np.arange(n // 100 + 1), 100)[:n], InstrumentSpec())


def test_bad_inputs_fail_their_gates_with_a_reason_never_pass_by_default():
    rng = np.random.default_rng(0)
    good = _result(rng.normal(0.001, 0.01, 1600), trades=200)
    candidates = rng.normal(0, 0.01, (1600, 4))
    few = {g.name: g for g in evaluate_gates(_result(good.returns, 5), candidates, np.array([0.0]), None, 0.01, 1.0)}
    assert not few["deflated_sharpe"].passed and "too few trades" in few["deflated_sharpe"].reason
    assert not few["spa"].passed
    flat = {g.name: g for g in evaluate_gates(_result(np.zeros(1600), 200), candidates, np.array([0.0]), None, 0.01,
                                              1.0)}
    assert "no variance" in flat["deflated_sharpe"].reason and not flat["spa"].passed
    missing = Champion(version="3", error="champion 3: model package is missing")
    gates = {g.name: g for g in evaluate_gates(good, candidates, np.array([0.0]), missing, 0.01, 1.0)}
    assert not gates["versus_champion"].passed and "package is missing" in gates["versus_champion"].reason
    assert not gates["spa"].passed
    unknown = {g.name: g for g in evaluate_gates(good, candidates, np.array([0.0]), None, float("nan"), 9.0)}
    assert not unknown["calibration"].passed and not unknown["latency"].passed
    one_candidate = {g.name: g for g in evaluate_gates(good, candidates[:, :1], np.array([0.0]), None, 0.01, 1.0)}
    assert not one_candidate["pbo"].passed and "cannot be computed" in one_candidate["pbo"].reason
