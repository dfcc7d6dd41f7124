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
from pathlib import Path

import click

from smc_core.settings import Settings


def _first_balance(labels_metadata: dict) -> str:
    """'long/short/skip' counts of the first horizon."""
    counts = labels_metadata.get("label_counts") or {}
    if not counts:
        return "-"
    first = next(iter(counts.values()))
    return "/".join(str(first[name]) for name in ("long", "short", "skip"))


_QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def ensure_dagster_home(home: Path) -> None:
    """Create DAGSTER_HOME with a minimal dagster.yaml (local storage, no telemetry) if absent."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")


def run_demo(settings: Settings, *, days: int, symbol: str, start: date) -> int:
    os.environ.setdefault("DAGSTER_HOME", str(settings.smc_home / "dagster"))
    ensure_dagster_home(Path(os.environ["DAGSTER_HOME"]))

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

    job = definitions.resolve_job_def("market_data_job")
    failures = 0
    rows = []
    for request in requests:
        run = job.execute_in_process(partition_key=request.partition_key, instance=instance, tags=request.tags,
                                     run_config=_QUIET_CONSOLE, raise_on_error=False)
        metadata = {event.asset_key.to_user_string(): {k: v.value for k, v in event.materialization.metadata.items()}
                    for event in run.get_asset_materialization_events()}
        failed_checks = sorted(e.check_name for e in run.get_asset_check_evaluations() if not e.passed)
        checks = len(run.get_asset_check_evaluations())
        failures += 0 if run.success else 1
        rows.append((str(request.partition_key), run.success, metadata, checks, failed_checks))

    click.echo("[4/4] partitions (bars → features → labels)")
    click.echo(f"      {'partition':<16} {'status':<7} {'bars':>5} {'new':>5} {'features':>9}  {'labels (long/short/skip)':<25} checks")
    for key, success, metadata, checks, failed in rows:
        bars_meta, feature_meta = metadata.get("bars", {}), metadata.get("features", {})
        balance = _first_balance(metadata.get("labels", {}))
        verdict = f"{checks - len(failed)}/{checks} pass" + (f" (failed: {', '.join(failed)})" if failed else "")
        click.echo(f"      {key:<16} {'ok' if success else 'FAILED':<7} {bars_meta.get('stored_bars', 0):>5} "
                   f"{bars_meta.get('rows_inserted', 0):>5} {feature_meta.get('rows', 0):>9}  {balance:<25} {verdict}")
    click.echo(f"done in {time.perf_counter() - started:.1f}s; DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
               "(`make ui` shows these runs)")
    return 1 if failures else 0
