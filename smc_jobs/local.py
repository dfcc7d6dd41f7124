"""What the Dagster daemon does, one step at a time, in this process: evaluate a sensor (its
cursor kept in the instance), execute the runs it requests, run a job. ``smc demo`` and the
end-to-end tests drive the real sensors and jobs this way; with ``dagster dev`` running,
the daemon does the same on its own ticks."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import DagsterInstance, Definitions, RunRequest, build_sensor_context

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class RunFailed(Exception):
    """A run this process executed failed; the message is the failing step's error."""


@dataclass
class LocalRunner:
    definitions: Definitions
    instance: DagsterInstance
    cursor_prefix: str = "smc_local"

    def tick(self, sensor_name: str, sensor=None):
        """One evaluation of a sensor (``sensor`` overrides the definition of that name); the
        cursor carries over between ticks and processes like the daemon's does."""
        sensor = sensor or self.definitions.get_sensor_def(sensor_name)
        key = f"{self.cursor_prefix}:{sensor_name}"
        cursor = self.instance.run_storage.get_cursor_values({key}).get(key)
        resources = {name: self.definitions.resources[name] for name in sensor.required_resource_keys}
        with build_sensor_context(instance=self.instance, resources=resources, cursor=cursor) as context:
            result = sensor(context)
        new_cursor = getattr(result, "cursor", None)
        if new_cursor is not None:
            self.instance.run_storage.set_cursor_values({key: new_cursor})
        for request in getattr(result, "dynamic_partitions_requests", None) or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    def execute(self, request: RunRequest, job_name: str | None = None, *, raise_on_error: bool = True,
                run_config: dict | None = None):
        """Execute one requested run with its partition, tags and run config."""
        job = self.definitions.resolve_job_def(request.job_name or job_name)
        config = _merge(QUIET, request.run_config or {}, run_config or {})
        result = job.execute_in_process(partition_key=request.partition_key, instance=self.instance,
                                        tags=request.tags, run_config=config, raise_on_error=False)
        if raise_on_error and not result.success:
            raise RunFailed(failure_message(result))
        return result

    def run(self, job_name: str, run_config: dict | None = None, tags: dict | None = None, *,
            raise_on_error: bool = True, asset_selection=None):
        job = self.definitions.resolve_job_def(job_name)
        result = job.execute_in_process(instance=self.instance, run_config=_merge(QUIET, run_config or {}),
                                        tags=tags, raise_on_error=False, asset_selection=asset_selection)
        if raise_on_error and not result.success:
            raise RunFailed(failure_message(result))
        return result


def terminate(process, timeout: float = 20.0) -> None:
    """Stop a child process politely (SIGTERM: BentoML drains in-flight requests), else kill it."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def failure_message(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.step_failure_data.error if event.step_failure_data else None
            return f"{event.step_key}: {error.message.strip() if error and error.message else event.message}"
    return f"run {result.run_id} failed"


def materialized(result) -> dict[str, dict]:
    """Asset key → its materialization metadata (plain values) in a run."""
    return {event.asset_key.to_user_string(): {k: v.value for k, v in event.materialization.metadata.items()}
            for event in result.get_asset_materialization_events()}


def _merge(*configs: dict) -> dict:
    merged: dict = {}
    for config in configs:
        for key, value in config.items():
            merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(
                merged.get(key), dict) else value
    return merged
