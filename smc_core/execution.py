"""Where Dagster runs the steps of a job: one process, a process per step, Celery workers, or a
Kubernetes Job per step.

Why a setting and not a job option: the same code location serves a laptop (`make ui`, one
process per step), the Compose stack (Celery workers sharing ``SMC_HOME``) and a cluster
(the Helm chart's own executor); what differs between them is the environment, so the
choice is read from it like every other setting (DESIGN §7, §12). Nothing here imports Dagster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from smc_core.errors import ConfigError

EXECUTORS = ("default", "in_process", "multiprocess", "celery", "k8s")


@dataclass(frozen=True)
class ExecutionSettings:
    executor: str = "default"
    """``SMC_EXECUTOR``: ``default`` is Dagster's own (a process per step, or one process when a
    run's config asks for it), ``in_process``, ``multiprocess``, ``celery`` (steps go to
    dagster-celery workers listening on ``celery_broker_url``), or ``k8s`` (dagster-k8s'
    ``k8s_job_executor``: each step a Kubernetes Job, configured like the run launcher of the
    Helm chart that launched the run; only inside a cluster)."""
    celery_broker_url: str | None = None
    """``CELERY_BROKER_URL``: ``redis://host:6379/0`` or ``amqp://user:password@host:5672//``."""
    celery_backend_url: str | None = None
    """``CELERY_BACKEND_URL``: where workers post step results; unset: the broker itself for a
    Redis broker, ``rpc://`` (replies over the broker) for RabbitMQ."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ExecutionSettings":
        env = os.environ if env is None else env
        executor = (env.get("SMC_EXECUTOR") or "default").strip().lower()
        if executor not in EXECUTORS:
            raise ConfigError(f"SMC_EXECUTOR={executor!r} is not one of {', '.join(EXECUTORS)}")
        broker = env.get("CELERY_BROKER_URL") or None
        if executor == "celery" and broker is None:
            raise ConfigError("SMC_EXECUTOR=celery needs CELERY_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")
        if broker is not None and not broker.startswith(("redis://", "rediss://", "amqp://", "pyamqp://")):
            raise ConfigError(f"CELERY_BROKER_URL={broker!r} is neither a redis:// nor an amqp:// URL")
        backend = env.get("CELERY_BACKEND_URL") or None
        if backend is None and broker is not None:
            backend = broker if broker.startswith(("redis://", "rediss://")) else "rpc://"
        return cls(executor, broker, backend)
