"""Run-failure sensor: every failed run of this code location becomes an alert (``alerts`` table,
optional webhook) naming the job, the run, the failing step's error and, for retrains,
the episode and reason that started it — so a failed nightly retrain is not noticed days late."""

from dagster import RunFailureSensorContext, run_failure_sensor

from sensors.retrain import EPISODE_TAG, REASON_TAG, default_status
from smc_assets.resources import DatabaseResource
from smc_core.alerts import raise_alert
from smc_core.monitoring import MonitoringSettings


def build_run_failure_sensor(settings: MonitoringSettings):
    @run_failure_sensor(
        name="run_failure_sensor",
        default_status=default_status(settings),
        description="Records every failed run as an alert (and posts it to SMC_ALERT_WEBHOOK when set).",
    )
    def run_failure_alert(context: RunFailureSensorContext, database: DatabaseResource):
        run = context.dagster_run
        step_failures = context.get_step_failure_events()
        steps = [event.step_key for event in step_failures]
        errors = [_error_text(event) for event in step_failures]
        message = "; ".join(f"{step}: {error}" for step, error in zip(steps, errors)) or \
            (context.failure_event.message or "run failed")
        details = {"run_id": run.run_id, "job": run.job_name, "steps": steps,
                   "tags": {k: v for k, v in run.tags.items() if k.startswith("smc/") or k.startswith("dagster/")}}
        episode = run.tags.get(EPISODE_TAG)
        subject = f"{run.job_name} run {run.run_id[:8]}" + (f" (retrain {episode})" if episode else "")
        if REASON_TAG in run.tags:
            message += f" (retrain reason: {run.tags[REASON_TAG]})"
        alert = raise_alert(database.database(), "run_failure", subject, message, details, severity="error")
        context.log.error(f"ALERT {alert}: {subject} failed in {', '.join(steps) or 'launch'}: {message}")

    return run_failure_alert


def _error_text(event) -> str:
    """The failing step's own error (a Failure's description, an exception's message)."""
    data = event.step_failure_data
    error = data.error if data is not None else None
    if error is None:
        return event.message or "failed"
    return (error.message or "").strip().splitlines()[0] if error.message else error.cls_name or "failed"
