"""``smc demo``: the pipeline on sample data, through the same sensor and job a user runs.

Sample NinjaTrader exports are written to the landing folder, the landing-file sensor is
evaluated once to decide which partitions to load, and each requested run executes the
``bars`` job (with its checks) against a persistent Dagster instance, so everything the
demo did is visible afterwards in ``make ui``.
"""

from __future__ import annotations

import os
import time
from datetime import date

import click

from smc_core.settings import Settings


_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_demo(settings: Settings, *, days: int, symbol: str, start: date) -> int:
    os.environ.setdefault("DAGSTER_HOME", str(settings.smc_home / "dagster"))
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)

    from dagster import DagsterInstance, build_sensor_context

    from smc_core.db import Database, redact
    from smc_core.migrations import migrate, storage_mode
    from smc_core.synthetic import Instrument, SyntheticConfig, write_synthetic
    from smc_jobs.definitions import build_definitions

    started = time.perf_counter()
    click.echo(f"[1/4] database: {'DATABASE_URL' if settings.database_url else 'embedded PostgreSQL under ' + str(settings.smc_home)}")
    database = Database.from_settings(settings)
    migrate(database)
    click.echo(f"      {redact(database.url)} (storage: {storage_mode(database)})")

    click.echo(f"[2/4] writing {days} trading days of synthetic {symbol} 1-minute bars to {settings.landing_dir}")
    config = SyntheticConfig(days=days, start=start, instrument=Instrument(symbol=symbol))
    paths = write_synthetic(config, settings.landing_dir, fmt="ninjatrader", tz=settings.exchange_tz)
    click.echo(f"      {len(paths)} NinjaTrader export files")

    definitions = build_definitions(settings)
    instance = DagsterInstance.get()
    sensor = definitions.get_sensor_def("landing_file_sensor")
    cursor_key = "smc_demo_sensor_cursor"
    with build_sensor_context(instance=instance, resources=definitions.resources,
                              cursor=instance.run_storage.get_cursor_values({cursor_key}).get(cursor_key)) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    instance.run_storage.set_cursor_values({cursor_key: result.cursor})
    requests = result.run_requests or []
    click.echo(f"[3/4] landing_file_sensor requested {len(requests)} partition run(s)"
               + ("" if requests else " (files unchanged since the last demo: nothing to load)"))

    job = definitions.resolve_job_def("bars_job")
    failures = 0
    rows = []
    for request in requests:
        run = job.execute_in_process(partition_key=request.partition_key, instance=instance, tags=request.tags,
                                     run_config=_QUIET_CONSOLE, raise_on_error=False)
        metadata = {}
        for event in run.get_asset_materialization_events():
            metadata = {k: v.value for k, v in event.materialization.metadata.items()}
        checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
        failures += 0 if run.success else 1
        rows.append((str(request.partition_key), run.success, metadata, checks))

    click.echo("[4/4] bars partitions")
    click.echo(f"      {'partition':<16} {'status':<8} {'inserted':>8} {'unchanged':>9} {'stored':>7}  checks")
    for key, success, metadata, checks in rows:
        verdicts = " ".join(f"{name}={'pass' if ok else 'FAIL'}" for name, ok in sorted(checks.items()))
        click.echo(f"      {key:<16} {'ok' if success else 'FAILED':<8} {metadata.get('rows_inserted', 0):>8} "
                   f"{metadata.get('rows_unchanged', 0):>9} {metadata.get('stored_bars', 0):>7}  {verdicts}")
    click.echo(f"done in {time.perf_counter() - started:.1f}s; DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
               "(`make ui` shows these runs)")
    return 1 if failures else 0
