"""The Dagster executor and IO manager every job of the code location uses (SMC_EXECUTOR).

The fan-out steps (walk-forward folds of ``challenger_evaluation``, the bars → features →
labels steps of each partition run) hand their outputs on through the IO manager, so it
writes under ``SMC_HOME``: the one folder every process of a deployment shares (Compose
volume, Kubernetes ReadWriteMany claim), wherever a step runs.
"""

from __future__ import annotations

from pathlib import Path

from dagster import ExecutorDefinition, FilesystemIOManager, in_process_executor, multiprocess_executor

from smc_core.execution import ExecutionSettings


def build_executor(settings: ExecutionSettings) -> ExecutorDefinition | None:
    """None keeps Dagster's default (a process per step unless a run asks for one process)."""
    if settings.executor == "in_process":
        return in_process_executor
    if settings.executor == "multiprocess":
        return multiprocess_executor
    if settings.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured({"broker": settings.celery_broker_url,
                                           "backend": settings.celery_backend_url}, name="celery")
    if settings.executor == "k8s":
        # its pods inherit the K8sRunLauncher's image, env, secrets and volumes; run config may
        # add per-step resources (execution.config.step_k8s_config) and max_concurrent
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return None


def step_io_manager(smc_home: Path) -> FilesystemIOManager:
    return FilesystemIOManager(base_dir=str(smc_home / "dagster_io"))
