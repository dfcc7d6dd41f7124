"""SMC_EXECUTOR and the Celery broker settings: what each value gives the jobs, and what is refused."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from smc_core.errors import ConfigError
from smc_core.execution import ExecutionSettings
from smc_jobs.executors import build_executor


def test_the_default_keeps_dagsters_own_executor():
    settings = ExecutionSettings.from_env({})
    assert settings.executor == "default" and build_executor(settings) is None


def test_celery_takes_its_broker_and_a_backend_that_fits_it():
    redis = ExecutionSettings.from_env({"SMC_EXECUTOR": "celery", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/3"})
    assert (redis.celery_broker_url, redis.celery_backend_url) == ("redis://127.0.0.1:6379/3",) * 2
    rabbit = ExecutionSettings.from_env({"SMC_EXECUTOR": "Celery",
                                         "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    assert rabbit.executor == "celery" and rabbit.celery_backend_url == "rpc://"
    explicit = ExecutionSettings.from_env({"SMC_EXECUTOR": "celery", "CELERY_BROKER_URL": "amqp://h//",
                                           "CELERY_BACKEND_URL": "redis://h:6379/1"})
    assert explicit.celery_backend_url == "redis://h:6379/1"
    executor = build_executor(redis)
    assert executor.name == "celery"


def test_every_job_of_the_code_location_uses_the_chosen_executor(tmp_path):
    from smc_core.settings import Settings
    from smc_jobs.definitions import build_definitions

    settings = Settings.from_env({"SMC_HOME": str(tmp_path)})
    celery = ExecutionSettings.from_env({"SMC_EXECUTOR": "celery", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/3"})
    definitions = build_definitions(settings, execution=celery)
    for name in ("market_data_job", "promotion_job", "retrain_job"):
        assert definitions.resolve_job_def(name).executor_def.name == "celery", name
    local = build_definitions(settings, execution=ExecutionSettings.from_env({"SMC_EXECUTOR": "in_process"}))
    assert local.resolve_job_def("promotion_job").executor_def.name == "in_process"


def test_k8s_gives_every_job_dagster_k8s_job_executor_and_the_helm_values_step_config_validates(tmp_path):
    """SMC_EXECUTOR=k8s: each step its own Kubernetes Job. No cluster here: what is checked offline is
    that every job carries dagster-k8s' executor and that the per-step run config the Helm values
    document is accepted by the job's own config schema (and a wrong one is refused)."""
    import yaml
    from dagster import DagsterInvalidConfigError, validate_run_config

    from smc_core.settings import Settings
    from smc_jobs.definitions import build_definitions

    k8s = ExecutionSettings.from_env({"SMC_EXECUTOR": "k8s"})
    definitions = build_definitions(Settings.from_env({"SMC_HOME": str(tmp_path)}), execution=k8s)
    values = (Path(__file__).parents[1] / "deploy" / "k8s" / "dagster" / "values.yaml").read_text()
    lines = values.splitlines()
    block = lines[lines.index("#   execution:"):]  # the commented run config, up to the first line not of it
    documented = yaml.safe_load("\n".join(line[1:] for line in itertools.takewhile(
        lambda line: line.startswith("#   "), block)))
    assert documented["execution"]["config"]["step_k8s_config"]["container_config"]["resources"]
    for name in ("market_data_job", "promotion_job", "retrain_job"):
        job = definitions.resolve_job_def(name)
        assert job.executor_def.name == "k8s", name
        validate_run_config(job, {"execution": documented["execution"]})
    with pytest.raises(DagsterInvalidConfigError):
        validate_run_config(definitions.resolve_job_def("promotion_job"),
                            {"execution": {"config": {"max_concurrent": "eight"}}})


@pytest.mark.parametrize("env, message", [
    ({"SMC_EXECUTOR": "threads"}, "SMC_EXECUTOR='threads' is not one of default, in_process, multiprocess, celery, k8s"),
    ({"SMC_EXECUTOR": "celery"}, "SMC_EXECUTOR=celery needs CELERY_BROKER_URL"),
    ({"SMC_EXECUTOR": "celery", "CELERY_BROKER_URL": "127.0.0.1:6379"},
     "CELERY_BROKER_URL='127.0.0.1:6379' is neither a redis:// nor an amqp:// URL"),
])
def test_a_wrong_setting_is_refused_naming_the_variable(env, message):
    with pytest.raises(ConfigError) as error:
        ExecutionSettings.from_env(env)
    assert message in str(error.value)
