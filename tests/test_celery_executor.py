"""promotion_job on two real Celery workers equals the in-process run, bit for bit.

Set-up as a deployment has it: a Dagster instance on PostgreSQL (the shipped
dagster.yaml.example, its own database), the machine's Redis as broker and result backend
(a database number no one else uses), two workers started with the Compose file's own
command and config (`dagster-celery worker start -A dagster_celery.app -y
deploy/compose/celery.yaml`), one task at a time each. The same `dagster job execute` runs
promotion_job twice on the same trained challenger: once with SMC_EXECUTOR=in_process (every
step in one process), once with SMC_EXECUTOR=celery (every step a Celery task).

Equal bit for bit: every walk-forward fold's weights digest and figures, the backtest
metrics, the selected threshold, the returns file, every gate's statistic, threshold,
verdict and reason, and the decision. The one figure that is a measurement, not a result,
is the latency gate's single-window p50: its verdict is compared, its milliseconds are not.
Between the runs the trial ledger is put back as it was (the first run's trials would
otherwise count in the second's Deflated Sharpe Ratio, as they should in production).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import redis
import yaml
from dagster import DagsterEventType, DagsterInstance
from pipeline_setup import QUIET, trained_pipeline
from test_dagster_instance import _as_url

from smc_core.db import create_database, with_database
from smc_core.registry import alias_version

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CELERY_YAML = ROOT / "deploy" / "compose" / "celery.yaml"
REDIS = "redis://127.0.0.1:6379"
EVALUATION = {"folds": 2, "base_epochs": 1, "min_trades": 0, "min_dsr": 0.0, "max_pbo": 1.0, "max_spa_pvalue": 1.0,
              "min_sharpe_improvement": -100.0, "max_drawdown_worsening": 100.0, "max_latency_ms": 1000.0,
              "max_ece": 0.0}  # the calibration gate fails: a refusal, decided the same way on both executors
FOLD_STEPS = {"challenger_evaluation.evaluate_fold[fold_1]", "challenger_evaluation.evaluate_fold[fold_2]"}


@pytest.fixture(scope="module")
def broker():
    """A Redis database number of this test's own on the machine's Redis, emptied afterwards."""
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS}/{number}")
        if client.dbsize() == 0 and client.set("smc:celery-test", os.getpid(), nx=True, ex=3600):
            yield f"{REDIS}/{number}"
            client.flushdb()
            client.close()
            return
        client.close()
    pytest.fail("every database number 1-15 of the machine's Redis holds keys: none free for the Celery broker")


@pytest.fixture(scope="module")
def pipeline(database, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return trained_pipeline(database.url, tmp_path_factory.mktemp("smc_home"), days=3,
                                base_config={"epochs": 1}, lora_config={"epochs": 1, "baselines": False})


@pytest.fixture(scope="module")
def deployment(pipeline, database, admin_url, broker, tmp_path_factory):
    """The environment every process shares, with a DAGSTER_HOME on PostgreSQL; two workers running."""
    folder = tmp_path_factory.mktemp("deployment")
    name = f"smc_t_celery_{os.getpid()}"
    create_database(admin_url, name)
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml.example", home / "dagster.yaml")
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=_as_url(with_database(admin_url, name)),
               DATABASE_URL=database.url, SMC_HOME=str(pipeline.settings.smc_home), CELERY_BROKER_URL=broker,
               CELERY_BACKEND_URL=broker, PYTHONPATH=str(ROOT),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    # the instance's tables first, as the compose file's migrate service does: two workers creating
    # them at once on a fresh database collide (a duplicate-key error on the table's type)
    subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance", "migrate"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    workers = [_start_worker(f"smc-test-{k}", env, folder / f"worker{k}.log") for k in (1, 2)]
    patch = pytest.MonkeyPatch()
    patch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])  # this process reads the instance too
    try:
        _wait_ready(workers, folder)
        yield env, home, folder
    finally:
        patch.undo()
        for process in workers:
            _stop(process)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start_worker(name: str, env: dict, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
               "-y", str(CELERY_YAML), "-n", name, "--", "--concurrency=1"]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_ready(workers: list[subprocess.Popen], folder: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [(folder / f"worker{k}.log").read_text() for k in (1, 2)]
        if all(" ready." in log for log in logs):
            return
        for process, log in zip(workers, logs):
            assert process.poll() is None, f"a Celery worker exited:\n{log[-3000:]}"
        time.sleep(0.5)
    raise AssertionError("the Celery workers did not report ready within 120 s")


def _stop(process: subprocess.Popen) -> None:
    """The worker's process group (dagster-celery and the celery it started), this test's own."""
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
    except ProcessLookupError:
        pass


def _execute(env: dict, folder: Path, executor: str) -> tuple[str, float]:
    """`dagster job execute` of promotion_job with one executor; returns the run id and its seconds."""
    config = folder / "promotion.yaml"
    config.write_text(yaml.safe_dump({**QUIET, "ops": {"challenger_evaluation": {"config": EVALUATION}}}))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-d", str(ROOT), "-m",
                           "smc_jobs.definitions", "-a", "defs", "-j", "promotion_job", "-c", str(config)],
                          cwd=ROOT, env={**env, "SMC_EXECUTOR": executor}, capture_output=True, text=True,
                          timeout=900)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = instance.get_runs(limit=1)[0]
    return run.run_id, seconds


def _outcome(home: str, run_id: str) -> dict:
    """What the run decided and measured, read back from the instance on PostgreSQL."""
    with DagsterInstance.from_config(home) as instance:
        run = instance.get_run_by_id(run_id)
        logs = instance.all_logs(run_id)
    events = [entry.dagster_event for entry in logs if entry.dagster_event is not None]
    times = {(entry.dagster_event.event_type, entry.dagster_event.step_key): entry.timestamp
             for entry in logs if entry.dagster_event is not None}
    materialized = {e.asset_key.to_user_string(): {k: v.value for k, v in e.step_materialization_data
                                                   .materialization.metadata.items()}
                    for e in events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION}
    observed = [{k: v.value for k, v in e.asset_observation_data.asset_observation.metadata.items()}
                for e in events if e.event_type == DagsterEventType.ASSET_OBSERVATION]
    checks = {e.event_specific_data.check_name: e.event_specific_data.passed
              for e in events if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION}
    on_workers = {e.step_key: e.event_specific_data.metadata["Celery worker"].value
                  for e in events if e.event_type == DagsterEventType.ENGINE_EVENT and e.step_key
                  and "Celery worker" in (e.event_specific_data.metadata or {})}
    evaluation = materialized["challenger_evaluation"]
    gates = [dict(gate, statistic=None, reason=None) if gate["name"] == "latency" else gate
             for gate in evaluation["gate_results"]]
    return {
        "status": run.status.value, "gates": gates, "checks": checks, "folds": evaluation["folds"],
        "metrics": evaluation["metrics"], "selected_threshold": evaluation["selected_threshold"],
        "verdict": (evaluation["verdict"], evaluation["failed_gates"]),
        "returns": pd.read_parquet(evaluation["returns_path"]),
        "decision": observed[-1]["decision"] if observed else materialized.get("champion", {}).get("decision"),
        "steps": {e.step_key for e in events if e.event_type == DagsterEventType.STEP_SUCCESS},
        "on_workers": on_workers,
        "fold_seconds": {step: times[(DagsterEventType.STEP_SUCCESS, step)] - times[(DagsterEventType.STEP_START, step)]
                         for step in FOLD_STEPS},
    }


def test_promotion_job_on_two_celery_workers_equals_the_in_process_run(deployment, pipeline, database):
    env, home, folder = deployment
    challenger = alias_version("challenger")
    local_id, local_seconds = _execute(env, folder, "in_process")
    with database.connection() as conn:  # the trial ledger as it was before the first run
        conn.execute("DELETE FROM backtest_trials WHERE dagster_run_id = %s", (local_id,))
    celery_id, celery_seconds = _execute(env, folder, "celery")
    print(f"promotion_job: in-process {local_seconds:.1f} s, two Celery workers {celery_seconds:.1f} s")
    local, distributed = _outcome(str(home), local_id), _outcome(str(home), celery_id)
    for fold in distributed["folds"]:  # the sizing figure README's Deployment section quotes
        seconds = distributed["fold_seconds"][f"challenger_evaluation.evaluate_fold[fold_{fold['fold']}]"]
        print(f"fold {fold['fold']} on a Celery worker: {fold['train_windows']} training windows in {seconds:.1f} s")

    # every step of the Celery run ran on a worker; the two folds were separate steps, on both workers
    assert local["on_workers"] == {} and local["steps"] == distributed["steps"] >= FOLD_STEPS
    assert set(distributed["on_workers"]) == distributed["steps"]
    assert {distributed["on_workers"][step].split("@")[0] for step in FOLD_STEPS} == {"smc-test-1", "smc-test-2"}

    assert local["status"] == distributed["status"] == "SUCCESS"
    assert [fold["weights_sha256"] for fold in local["folds"]] == [f["weights_sha256"] for f in distributed["folds"]]
    for key in ("folds", "metrics", "selected_threshold", "gates", "checks", "verdict", "decision"):
        assert local[key] == distributed[key], key
    pd.testing.assert_frame_equal(local["returns"], distributed["returns"], check_exact=True)
    assert local["verdict"] == ("refused", "calibration") and local["decision"] == "refused"
    assert alias_version("champion") is None and alias_version("challenger") == challenger
    assert len({fold["weights_sha256"] for fold in local["folds"]}) == 2  # two different fold models
