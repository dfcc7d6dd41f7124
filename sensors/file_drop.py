"""Sensor: new or changed files in the landing folder → runs for exactly the partitions they cover.

The cursor maps each file to the hash of the content already requested, so a tick that
sees nothing new requests nothing, and run keys make a repeated tick harmless too.
"""


import hashlib
import json
from datetime import date

from dagster import (AddDynamicPartitionsRequest, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult,
                     SkipReason, sensor)

from smc_assets.partitions import SYMBOLS, bar_partition_key, requestable_days
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core import landing as landing_folder


def build_file_drop_sensor(job_name: str, minimum_interval_seconds: int = 30,
                           default_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED):
    @sensor(
        name="landing_file_sensor",
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Requests the bars partitions covered by new or changed files in the landing folder.",
    )
    def landing_file_sensor(context: SensorEvaluationContext, database: DatabaseResource, landing: LandingResource):
        state = json.loads(context.cursor) if context.cursor else {"files": {}, "problems": {}}
        db = database.database()
        scan = landing_folder.scan(db, landing.folder, timeframe=landing.timeframe, tz=landing.timezone)
        for path, problem in scan.problems.items():
            if state["problems"].get(path) != problem:
                context.log.warning(f"landing file skipped: {problem}")
        first_day, last_day = requestable_days()
        shas_by_partition: dict[tuple[str, date], list[str]] = {}
        for entry in scan.files:
            if state["files"].get(str(entry.path)) == entry.sha256:
                continue
            for day in entry.days:
                if first_day <= day <= last_day:
                    shas_by_partition.setdefault((entry.symbol, day), []).append(entry.sha256)
                else:
                    context.log.warning(f"{entry.path}: {day} is outside the partition range {first_day} … {last_day} "
                                        "(SMC_PARTITION_START, SMC_PARTITION_END)")
        new_symbols = sorted({symbol for symbol, _ in shas_by_partition} -
                             set(context.instance.get_dynamic_partitions(SYMBOLS.name)))
        run_requests = []
        for (symbol, day), shas in sorted(shas_by_partition.items()):
            key = bar_partition_key(symbol, day)
            content = hashlib.sha256("".join(sorted(shas)).encode()).hexdigest()[:16]
            run_requests.append(RunRequest(run_key=f"{key}@{content}", partition_key=key,
                                           tags={"smc/trigger": "landing_file", "smc/files_sha": content}))
        new_state = {"files": {str(f.path): f.sha256 for f in scan.files}, "problems": scan.problems}
        if not run_requests:
            return SensorResult(skip_reason=SkipReason("no new or changed landing files"),
                                cursor=json.dumps(new_state, sort_keys=True))
        return SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[AddDynamicPartitionsRequest(SYMBOLS.name, new_symbols)] if new_symbols else [],
            cursor=json.dumps(new_state, sort_keys=True),
        )

    return landing_file_sensor

