"""SMC_EXECUTOR and the Celery broker settings: what each value gives the jobs, and what is refused."""

from __future__ import annotations

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


@pytest.mark.parametrize("env, message", [
    ({"SMC_EXECUTOR": "threads"}, "SMC_EXECUTOR='threads' is not one of default, in_process, multiprocess, celery"),
    ({"SMC_EXECUTOR": "celery"}, "SMC_EXECUTOR=celery needs CELERY_BROKER_URL"),
    ({"SMC_EXECUTOR": "celery", "CELERY_BROKER_URL": "127.0.0.1:6379"},
     "CELERY_BROKER_URL='127.0.0.1:6379' is neither a redis:// nor an amqp:// URL"),
])
def test_a_wrong_setting_is_refused_naming_the_variable(env, message):
    with pytest.raises(ConfigError) as error:
        ExecutionSettings.from_env(env)
    assert message in str(error.value)
