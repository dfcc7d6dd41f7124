"""What the Dagster daemon does, one step at a time, in this process: evaluate a sensor, record
the tick in the instance, execute the runs it requests, run a job. ``smc demo`` and the
end-to-end tests drive the real sensors and jobs this way; with ``dagster dev`` running,
the daemon does the same on its own ticks.

A tick is recorded as the sensor daemon records it, for the code location ``workspace.yaml``
declares (the one ``make ui`` loads): the sensor's state holds its cursor (the daemon carries
on from it when the sensor is switched on), every evaluation is a tick with its skip reason,
cursor, run keys, run ids and captured log, and every run it requests carries the daemon's
tags (``dagster/sensor_name``, ``dagster/tick``, ``dagster/run_key``). The UI then shows the
ticks on the sensor's page and "Launched by <sensor>" on the runs. The runs execute here,
in process, rather than through a run launcher: a subprocess per partition run would cost
more than the run itself.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from dagster import DagsterInstance, Definitions, RunRequest, RunsFilter, SensorDefinition, build_sensor_context

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
WORKSPACE = Path(__file__).resolve().parent.parent / "workspace.yaml"
SENSOR_NAME_TAG, TICK_ID_TAG, RUN_KEY_TAG = "dagster/sensor_name", "dagster/tick", "dagster/run_key"


class RunFailed(Exception):
    """A run this process executed failed; the message is the failing step's error."""


class Evaluation(NamedTuple):
    """What one recorded tick of a sensor decided."""

    run_requests: list[RunRequest]
    skip_message: str | None
    cursor: str | None
    tick_id: int


@dataclass
class LocalRunner:
    definitions: Definitions
    instance: DagsterInstance
    workspace: Path = WORKSPACE
    _ticks: dict = field(default_factory=dict, repr=False)

    def tick(self, sensor_name: str, sensor: SensorDefinition | None = None) -> Evaluation:
        """One evaluation of a sensor, recorded in the instance as the daemon records it.
        ``sensor`` overrides the definition: its ticks and cursor are kept under ``sensor_name``.
        Requests whose run key already started a run of this sensor are dropped, as the daemon
        drops them."""
        sensor = sensor or self.definitions.get_sensor_def(sensor_name)
        repository = self.definitions.get_repository_def().name
        recorder = TickRecorder(self.instance, self.workspace, repository, sensor_name, sensor)
        resources = {name: self.definitions.resources[name] for name in sensor.required_resource_keys}
        tick = recorder.start()
        try:
            with build_sensor_context(instance=self.instance, instance_ref=self.instance.get_ref(),
                                      cursor=recorder.cursor, definitions=self.definitions, resources=resources,
                                      repository_name=repository, sensor_name=sensor_name) as context:
                data = sensor.evaluate_tick(context)
        except Exception:
            recorder.fail(tick, sys.exc_info())
            raise
        for request in data.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        requests, repeated = [], []
        for request in data.run_requests or []:
            if request.run_key and self.instance.get_run_ids(RunsFilter(
                    tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: sensor.name}), limit=1):
                repeated.append(request.run_key)
                continue
            job_name = request.job_name or (sensor.targets[0].job_name if len(sensor.targets) == 1 else None)
            requests.append(request.with_replaced_attrs(job_name=job_name,
                                                        tags={**request.tags, TICK_ID_TAG: str(tick.tick_id)}))
        skip = data.skip_message
        if repeated and not requests:
            skip = f"run key(s) already requested: {', '.join(repeated)}"
        tick = recorder.finish(tick, requests, skip, data.cursor, data.log_key)
        self._ticks[str(tick.tick_id)] = recorder, tick
        return Evaluation(requests, skip, data.cursor, tick.tick_id)

    def execute(self, request: RunRequest, job_name: str | None = None, *, raise_on_error: bool = True,
                run_config: dict | None = None):
        """Execute one requested run with its partition, tags and run config; a request from
        ``tick`` gets the daemon's run tags and its run id is added to the tick."""
        job = self.definitions.resolve_job_def(request.job_name or job_name)
        config = _merge(QUIET, request.run_config or {}, run_config or {})
        tags = {**request.tags, **({RUN_KEY_TAG: request.run_key} if request.run_key else {})}
        run_id = str(uuid.uuid4())
        origin = self._ticks.get(request.tags.get(TICK_ID_TAG, ""))
        if origin is not None:  # before execution: the tick links to the run while it runs
            recorder, tick = origin
            self._ticks[str(tick.tick_id)] = recorder, recorder.add_run(tick, run_id, request.run_key)
        result = job.execute_in_process(partition_key=request.partition_key, instance=self.instance, tags=tags,
                                        run_config=config, raise_on_error=False, run_id=run_id)
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


class TickRecorder:
    """The sensor daemon's bookkeeping for one sensor (``dagster._daemon.sensor``'s
    ``SensorLaunchContext``): its instigator state and ticks in the instance's schedule storage.

    Dagster has no public API to record a tick that was evaluated outside the daemon, so this
    uses the internal types the daemon writes (``InstigatorState``, ``TickData``) and keys them
    by the selector the UI and the daemon look them up with (code location from
    ``workspace.yaml``, repository, sensor name). Everything internal is in this class;
    ``tests/test_loop.py`` reads the ticks back through the UI's GraphQL schema.
    """

    def __init__(self, instance: DagsterInstance, workspace: Path, repository: str, name: str,
                 sensor: SensorDefinition):
        from dagster._core.remote_origin import RemoteRepositoryOrigin
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        (location,) = WorkspaceFileTarget(paths=[str(workspace)]).create_origins()
        self.instance, self.sensor = instance, sensor
        self.origin = RemoteRepositoryOrigin(location, repository).get_instigator_origin(name)
        self.origin_id, self.selector_id = self.origin.get_id(), self.origin.get_selector().get_id()

    def state(self):
        from dagster._core.definitions.run_request import InstigatorType
        from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, SensorInstigatorData

        state = self.instance.get_instigator_state(self.origin_id, self.selector_id)
        if state is None:  # declared in code: running or stopped as the sensor's default status says
            state = self.instance.add_instigator_state(InstigatorState(
                self.origin, InstigatorType.SENSOR, InstigatorStatus.DECLARED_IN_CODE,
                SensorInstigatorData(min_interval=self.sensor.minimum_interval_seconds,
                                     sensor_type=self.sensor.sensor_type)))
        return state

    @property
    def cursor(self) -> str | None:
        data = self.state().instigator_data
        return data.cursor if data is not None else None

    def start(self):
        from dagster._core.definitions.run_request import InstigatorType
        from dagster._core.scheduler.instigation import TickData, TickStatus

        return self.instance.create_tick(TickData(
            instigator_origin_id=self.origin_id, instigator_name=self.origin.instigator_name,
            instigator_type=InstigatorType.SENSOR, status=TickStatus.STARTED, timestamp=time.time(),
            selector_id=self.selector_id))

    def finish(self, tick, requests: list[RunRequest], skip_reason: str | None, cursor: str | None, log_key):
        from dagster._core.scheduler.instigation import SensorInstigatorData, TickStatus

        for request in requests:
            tick = tick.with_run_info(run_key=request.run_key)
        tick = tick.with_status(TickStatus.SUCCESS if requests else TickStatus.SKIPPED, failure_count=0,
                                consecutive_failure_count=0)
        tick = tick.with_reason(skip_reason if not requests else None).with_cursor(cursor)
        if log_key:
            tick = tick.with_log_key(list(log_key))
        self.instance.update_tick(tick)
        state = self.state()
        previous = state.instigator_data
        self.instance.update_instigator_state(state.with_data(SensorInstigatorData(
            last_tick_timestamp=tick.timestamp,
            last_run_key=tick.run_keys[-1] if tick.run_keys else getattr(previous, "last_run_key", None),
            min_interval=self.sensor.minimum_interval_seconds, cursor=cursor,
            last_tick_start_timestamp=tick.timestamp,
            last_sensor_start_timestamp=getattr(previous, "last_sensor_start_timestamp", None),
            sensor_type=self.sensor.sensor_type, last_tick_success_timestamp=time.time())))
        return tick

    def fail(self, tick, exc_info) -> None:
        from dagster._core.scheduler.instigation import TickStatus
        from dagster._utils.error import serializable_error_info_from_exc_info

        self.instance.update_tick(tick.with_status(TickStatus.FAILURE, error=serializable_error_info_from_exc_info(
            exc_info), failure_count=1, consecutive_failure_count=tick.consecutive_failure_count + 1))

    def add_run(self, tick, run_id: str, run_key: str | None):
        tick = tick.with_run_info(run_id, run_key)
        self.instance.update_tick(tick)
        return tick


def terminate(process, timeout: float = 20.0) -> None:
    """Stop a child process politely (SIGTERM: BentoML drains in-flight requests), else kill it."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def failure_message(result) -> str:
    """The first failed step and why: a ``Failure``'s own description (the domain's message), else
    the error with its type."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.step_failure_data.error if event.step_failure_data else None
            if not error or not error.message:
                return f"{event.step_key}: {event.message}"
            message = error.message.strip()
            if error.cls_name == "Failure" and message.startswith("dagster."):
                message = message.split(": ", 1)[-1]
            return f"{event.step_key}: {message}"
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
