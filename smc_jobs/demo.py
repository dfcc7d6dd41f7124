"""``smc demo``: the pipeline on sample data, through the same sensor and jobs a user runs.

Sample NinjaTrader exports (with the planted SMC edge by default) are written to the
landing folder, the landing-file sensor is evaluated once to decide which partitions to
load, each requested run executes ``market_data_job`` (bars, features, labels with their
checks), then ``base_model_job`` pretrains the backbone and ``train_job`` fine-tunes,
calibrates, compares and registers the LoRA model. Everything runs against a persistent
Dagster instance and MLflow store, so it is all visible afterwards in ``make ui`` and
``mlflow ui``.
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


def run_demo(settings: Settings, *, days: int, symbol: str, start: date, edge: str = "smc",
             train: bool = True) -> int:
    os.environ.setdefault("DAGSTER_HOME", str(settings.smc_home / "dagster"))
    ensure_dagster_home(Path(os.environ["DAGSTER_HOME"]))

    import warnings

    from dagster import BetaWarning, DagsterInstance

    # dagster-mlflow (beta) calls deprecated Dagster APIs; that is not the user's concern here
    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", message="InitResourceContext")
    warnings.filterwarnings("ignore", message="Starting in dagster 1.11, get_sensor_def")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

    from smc_core.db import Database, redact
    from smc_core.migrations import migrate, storage_mode
    from smc_core.synthetic import Instrument, SyntheticConfig, write_synthetic
    from smc_jobs.definitions import build_definitions
    from smc_jobs.local import LocalRunner

    started = time.perf_counter()
    steps = 8 if train else 4
    click.echo(f"[1/{steps}] database: {'DATABASE_URL' if settings.database_url else 'embedded PostgreSQL under ' + str(settings.smc_home)}")
    database = Database.from_settings(settings)
    migrate(database)
    click.echo(f"      {redact(database.url)} (storage: {storage_mode(database)})")

    click.echo(f"[2/{steps}] writing {days} trading days of synthetic {symbol} 1-minute bars "
               f"({'planted SMC edge' if edge == 'smc' else 'no edge'}) to {settings.landing_dir}")
    config = SyntheticConfig(days=days, start=start, instrument=Instrument(symbol=symbol), edge=edge,
                             edge_strength=0.9)
    paths = write_synthetic(config, settings.landing_dir, fmt="ninjatrader", tz=settings.exchange_tz)
    click.echo(f"      {len(paths)} NinjaTrader export files")

    definitions = build_definitions(settings)
    instance = DagsterInstance.get()
    runner = LocalRunner(definitions, instance)
    requests, rows = load_landing_files(runner)
    failures = sum(0 if success else 1 for _, success, *_ in rows)
    click.echo(f"[3/{steps}] landing_file_sensor requested {len(requests)} partition run(s)"
               + ("" if requests else " (files unchanged since the last demo: nothing to load)"))

    click.echo(f"[4/{steps}] partitions (bars → features → labels)")
    click.echo(f"      {'partition':<16} {'status':<7} {'bars':>5} {'new':>5} {'features':>9}  {'labels (long/short/skip)':<25} checks")
    for key, success, metadata, checks, failed in rows:
        bars_meta, feature_meta = metadata.get("bars", {}), metadata.get("features", {})
        balance = _first_balance(metadata.get("labels", {}))
        verdict = f"{checks - len(failed)}/{checks} pass" + (f" (failed: {', '.join(failed)})" if failed else "")
        click.echo(f"      {key:<16} {'ok' if success else 'FAILED':<7} {bars_meta.get('stored_bars', 0):>5} "
                   f"{bars_meta.get('rows_inserted', 0):>5} {feature_meta.get('rows', 0):>9}  {balance:<25} {verdict}")
    if train and not failures:
        failures += _train(definitions, instance, settings, steps)
    if train and not failures and rows:
        last_day = max(date.fromisoformat(str(key).split("|")[0]) for key, *_ in rows)
        failures += _serve_and_replay(settings, symbol, last_day, steps)
    click.echo(f"done in {time.perf_counter() - started:.1f}s; DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
               "(`make ui` shows these runs)")
    return 1 if failures else 0


def load_landing_files(runner):
    """One tick of ``landing_file_sensor``, then every partition run it requested, executed here.
    Returns (run requests, per-run rows of partition key, success, materialization metadata by
    asset, checks, failed checks)."""
    from smc_jobs.local import materialized

    requests = runner.tick("landing_file_sensor").run_requests or []
    rows = []
    for request in requests:
        run = runner.execute(request, "market_data_job", raise_on_error=False)
        failed_checks = sorted(e.check_name for e in run.get_asset_check_evaluations() if not e.passed)
        rows.append((str(request.partition_key), run.success, materialized(run),
                     len(run.get_asset_check_evaluations()), failed_checks))
    return requests, rows


def _train(definitions, instance, settings: Settings, steps: int) -> int:
    """base_model_job, train_job, then promotion_job, with their outcomes printed; returns 1 on a failed run.

    A challenger refused by its gates is an outcome, not a failure: the demo prints why.
    """
    from smc_core.registry import TrackingConfig

    progress = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    stages = ((5, "base_model_job", "base_model"), (6, "train_job", "lora_model"),
              (7, "promotion_job", "challenger_evaluation"))
    for step, job_name, asset in stages:
        click.echo(f"[{step}/{steps}] {job_name}: {definitions.resolve_job_def(job_name).description}")
        stage_started = time.perf_counter()
        run = definitions.resolve_job_def(job_name).execute_in_process(
            instance=instance, run_config={**progress, "ops": {asset: {"config": {}}}}, raise_on_error=False)
        metadata = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                    for e in run.get_asset_materialization_events()}
        if asset not in metadata:
            failure = next((e for e in run.all_events if e.event_type_value == "STEP_FAILURE"), None)
            click.echo(f"      FAILED: {failure.message if failure else 'see the Dagster run ' + run.run_id}")
            return 1
        click.echo(f"      done in {time.perf_counter() - stage_started:.0f}s")
        _print_outcome(asset, metadata)
    tracking = TrackingConfig.from_settings(settings)
    click.echo(f"      MLflow: mlflow ui --backend-store-uri {tracking.tracking_uri} "
               f"--default-artifact-root {tracking.artifact_root}   (or: make mlflow-ui)")
    return 0


def _print_outcome(asset: str, metadata: dict) -> None:
    meta = metadata[asset]
    if asset == "lora_model":
        click.echo(f"      registered {meta['model_version']} (alias challenger), package {meta['package_path']}")
        click.echo(f"      calibration (class-weight prior removed, temperature {meta['temperature']:.3f}): "
                   f"NLL {meta['nll_before']:.4f} → {meta['nll_after']:.4f}, "
                   f"ECE {meta['ece_before']:.4f} → {meta['ece_after']:.4f}")
        click.echo("      validation, side by side (newest 20% of windows, purged and embargoed):")
        _echo_block(meta["comparison"])
    elif asset == "challenger_evaluation":
        click.echo(f"      walk-forward backtest of {meta['model_version']} (selected entry threshold "
                   f"{meta['selected_threshold']}):")
        _echo_block(meta["backtest"])
        click.echo("      gates:")
        _echo_block(meta["gates"])
        if "champion" in metadata:
            click.echo(f"      PROMOTED: {metadata['champion']['champion']} is champion "
                       f"(previous: {metadata['champion']['previous']})")
        else:
            click.echo(f"      REFUSED: {meta['model_version']} stays challenger; the champion alias did not move")


def _echo_block(text: str) -> None:
    for line in text.splitlines():
        click.echo("      " + line)


def _serve_and_replay(settings: Settings, symbol: str, day: date, steps: int) -> int:
    """Serve the champion (or, when the gates refused every model, the challenger, clearly
    marked) with the real BentoML service and replay the last sample day through the client."""
    import socket
    import subprocess
    import sys

    import httpx

    from smc_core.db import Database
    from smc_core.registry import TrackingConfig, alias_version, configure, package_path
    from smc_core.serving.replay import replay_stored_day

    configure(TrackingConfig.from_settings(settings))
    env = {**os.environ, "SMC_DEV_MODE": "1", "SMC_HOME": str(settings.smc_home), "LOG_LEVEL": "WARNING"}
    if alias_version("champion") is not None:
        what = f"the champion smc-lora/{alias_version('champion')} (followed through the registry alias)"
    else:
        version = alias_version("challenger")
        env["MODEL_PATH"] = str(package_path(version))
        what = (f"the challenger smc-lora/{version} — REFUSED by the gates, served here only to show the "
                "service; nothing follows the champion alias until a model passes")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    click.echo(f"[{steps}/{steps}] serving {what}")
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "bento.service:SmcPredictor",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < 120:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                click.echo("      FAILED: the service exited while starting (run `smc serve --dev` to see why)")
                return 1
            time.sleep(0.3)
        click.echo(f"      ready in {time.perf_counter() - started:.1f}s at {url}; replaying {symbol} {day} bar by bar "
                   "through the Python client")
        sys.path.insert(0, str(root / "bento" / "clients" / "python"))
        from smc_client import SmcClient

        with SmcClient(url, "dev", timeout=2.0) as client:
            report = replay_stored_day(Database.from_settings(settings), symbol, day, client.predict_payload)
        summary = report.summary()
        click.echo(f"      {summary['requests']} requests, signals {summary['signals']}, latency p50 "
                   f"{summary['latency_p50_ms']:.1f} ms / p99 {summary['latency_p99_ms']:.1f} ms; policy P&L with "
                   f"costs {summary['net_pnl']:+.2f} $ over {summary['trades']} trades")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
