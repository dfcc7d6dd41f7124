"""LocalRunner keeps a sensor's books as the daemon does, on a real (temporary) Dagster instance:
the cursor lives in the sensor's instigator state (where the daemon carries on from it), a
run key that already started a run is not requested twice, a failing evaluation is a FAILURE
tick, and a run carries the daemon's tags and is listed on its tick. The UI side (GraphQL on
the demo's sensors) is in tests/test_loop.py."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, Definitions, RunRequest, SensorResult, job, op, sensor

from smc_jobs.local import LocalRunner, TickRecorder


@op
def step():
    return 1


@job
def work():
    step()


@sensor(job=work)
def counting_sensor(context):
    seen = int(context.cursor or 0)
    if seen >= 2:
        raise RuntimeError("sensor broke")
    return SensorResult(run_requests=[RunRequest(run_key="only-once", tags={"smc/trigger": "test"})],
                        cursor=str(seen + 1))


def test_ticks_cursor_run_keys_and_failures_are_recorded(tmp_path):
    instance = DagsterInstance.local_temp(str(tmp_path))
    runner = LocalRunner(Definitions(jobs=[work], sensors=[counting_sensor]), instance)
    books = TickRecorder(instance, runner.workspace, "__repository__", "counting_sensor", counting_sensor)

    first = runner.tick("counting_sensor")
    assert [r.run_key for r in first.run_requests] == ["only-once"] and books.cursor == "1"
    result = runner.execute(first.run_requests[0])
    assert result.dagster_run.tags["dagster/sensor_name"] == "counting_sensor"
    assert result.dagster_run.tags["dagster/run_key"] == "only-once"
    assert result.dagster_run.tags["dagster/tick"] == str(first.tick_id)
    assert result.dagster_run.tags["smc/trigger"] == "test"

    second = runner.tick("counting_sensor")  # same run key: dropped, as the daemon drops it
    assert not second.run_requests and "already requested: only-once" in second.skip_message and books.cursor == "2"

    with pytest.raises(RuntimeError, match="sensor broke"):
        runner.tick("counting_sensor")
    ticks = instance.get_ticks(books.origin_id, books.selector_id)
    assert [t.status.value for t in ticks] == ["FAILURE", "SKIPPED", "SUCCESS"]
    assert "sensor broke" in ticks[0].error.message and books.cursor == "2"  # a failed tick keeps the cursor
    assert ticks[2].run_ids == [result.run_id] and ticks[2].run_keys == ["only-once"]
    assert ticks[1].skip_reason == second.skip_message
    state = instance.get_instigator_state(books.origin_id, books.selector_id)
    assert state.status.value == "DECLARED_IN_CODE" and state.instigator_data.last_run_key == "only-once"
