"""The ``smc`` command line: database, ingest, synthetic data and the demo pipeline.

Errors print one line (``error: <file>:<line>: <problem>``) and exit non-zero; rejected
rows are listed one per line first. Nothing is written when a command fails.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import date
from pathlib import Path

import click

from smc_core.errors import RejectedRowsError, SmcError
from smc_core.settings import Settings

_MAX_LISTED = 50


def _settings() -> Settings:
    return Settings.from_env()


def _database():
    from smc_core.db import Database
    from smc_core.migrations import migrate

    db = Database.from_settings(_settings())
    migrate(db)
    return db


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="smc-mlops")
def cli() -> None:
    """SMC MLOps: NinjaTrader bars → features → LoRA model → gates → BentoML."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- db --------------------------------------------------------------------------------

@cli.group()
def db() -> None:
    """Database schema: migrate and inspect."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (sql/NNN_*.sql), each once, in order."""
    from smc_core.db import Database, redact
    from smc_core.migrations import migrate, storage_mode

    database = Database.from_settings(_settings())
    applied = migrate(database)
    for migration in applied:
        click.echo(f"applied {migration.path.name}")
    click.echo(f"{redact(database.url)}: schema up to date ({len(applied)} applied now, "
               f"storage {storage_mode(database)})")


@db.command("status")
def db_status() -> None:
    """Show the database, its storage mode and each migration's state."""
    from smc_core.db import Database, redact
    from smc_core.migrations import status, storage_mode

    database = Database.from_settings(_settings())
    rows = status(database)
    mode = storage_mode(database) if any(r.applied_at for r in rows) else "not migrated"
    click.echo(f"database: {redact(database.url)}")
    click.echo(f"storage:  {mode}")
    for row in rows:
        state = "pending" if row.applied_at is None else f"applied {row.applied_at:%Y-%m-%d %H:%M:%S}"
        if row.checksum_matches is False:
            state += "  CHANGED SINCE APPLIED"
        click.echo(f"  {row.version:03d}_{row.name:<24} {state}")
    if any(r.applied_at is None for r in rows):
        click.echo("run `smc db migrate` to apply pending migrations")


# --- ingest ----------------------------------------------------------------------------

@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--symbol", required=True, help="Instrument root, e.g. ES.")
@click.option("--timeframe", default="1m", show_default=True, help="Bar width: <n><s|m|h|d>.")
@click.option("--tz", default=None, help="Exchange time zone of naive timestamps [default: SMC_EXCHANGE_TZ].")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "ninjatrader", "csv", "parquet"]))
@click.option("--skip-invalid", is_flag=True, help="Write the valid rows; record rejected ones in the ingest log.")
def ingest(paths: tuple[Path, ...], symbol: str, timeframe: str, tz: str | None, fmt: str, skip_invalid: bool) -> None:
    """Validate and load bar files (NinjaTrader export, CSV or Parquet), each atomically."""
    from smc_core.ingest import check_symbol, ingest_file
    from smc_core.timeframe import parse_timeframe

    check_symbol(symbol)
    parse_timeframe(timeframe)
    database = _database()
    zone = tz or _settings().exchange_tz
    for path in paths:
        started = time.perf_counter()
        report = ingest_file(database, path, symbol, timeframe, tz=zone, fmt=fmt, skip_invalid=skip_invalid)
        for rejection in report.rejections[:_MAX_LISTED]:
            click.echo(f"skipped {rejection}", err=True)
        click.echo(f"{report.summary()} in {time.perf_counter() - started:.2f}s")


# --- synthetic data ----------------------------------------------------------------------

@cli.command()
@click.option("--days", default=5, show_default=True, type=click.IntRange(1, 5000), help="Trading days to generate.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--symbol", default="ES", show_default=True)
@click.option("--start", default="2024-01-02", show_default=True, help="First calendar day considered.")
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--edge", default="none", show_default=True, type=click.Choice(["none", "smc", "smc_reversed"]),
              help="Plant a learnable SMC setup edge, or none.")
@click.option("--format", "fmt", default="ninjatrader", show_default=True,
              type=click.Choice(["ninjatrader", "csv", "parquet"]))
def synth(days: int, out_dir: Path, symbol: str, start: str, seed: int, edge: str, fmt: str) -> None:
    """Generate realistic synthetic 1-minute futures bars, one file per trading day."""
    from smc_core.ingest import check_symbol
    from smc_core.synthetic import Instrument, SyntheticConfig, write_synthetic

    check_symbol(symbol)
    config = SyntheticConfig(days=days, start=_parse_date(start, "--start"), seed=seed, edge=edge,
                             instrument=Instrument(symbol=symbol))
    paths = write_synthetic(config, out_dir, fmt=fmt, tz=_settings().exchange_tz)
    click.echo(f"wrote {len(paths)} files for {symbol} to {out_dir / symbol}")


# --- demo --------------------------------------------------------------------------------

@cli.command()
@click.option("--days", default=26, show_default=True, type=click.IntRange(1, 250), help="History trading days.")
@click.option("--symbols", default="ES,NQ", show_default=True, help="Comma-separated instrument roots.")
@click.option("--start", default="2024-01-02", show_default=True, help="First calendar day of the sample data.")
@click.option("--edge", type=click.Choice(["smc", "none"]), default="smc", show_default=True,
              help="Plant the SMC edge in the history, or generate a market without one.")
@click.option("--train/--no-train", default=True, show_default=True, help="Pretrain, fine-tune, gate and serve.")
@click.option("--loop/--no-loop", default=True, show_default=True,
              help="Then change the market regime and close the loop: drift sensor, retrain, new champion.")
@click.option("--new-days", default=26, show_default=True, type=click.IntRange(5, 250),
              help="Trading days of the changed market (also the retrain's sliding window).")
def demo(days: int, symbols: str, start: str, edge: str, train: bool, loop: bool, new_days: int) -> None:
    """The whole lineage and the closed loop on sample data, in the embedded default setup."""
    from smc_jobs.demo import DemoPlan, run_demo

    names = tuple(s.strip().upper() for s in symbols.split(",") if s.strip())
    if not names:
        raise SmcError("--symbols names no symbol")
    sys.exit(run_demo(_settings(), DemoPlan(symbols=names, start=_parse_date(start, "--start"), days=days, edge=edge,
                                            train=train, loop=loop, new_days=new_days)))


# --- serving -------------------------------------------------------------------------------

@cli.command()
@click.option("--dev", is_flag=True, help="Serve without API keys (local use only; SMC_DEV_MODE=1).")
@click.option("--bento", "from_bento", is_flag=True,
              help="Serve the latest built Bento (bento_artifact) with the model packed in it, not the source.")
def serve(dev: bool, from_bento: bool) -> None:
    """Serve /predict with BentoML on HOST:PORT (the champion followed live, MODEL_PATH, or --bento)."""
    from smc_core.serving.runtime import ServiceSettings

    if dev:
        os.environ["SMC_DEV_MODE"] = "1"
    target = "bento.service:SmcPredictor"
    if from_bento:
        os.environ.setdefault("BENTOML_HOME", str(_settings().smc_home / "bentoml"))
        import bentoml

        try:
            bento = bentoml.get("smc_predictor:latest")
        except bentoml.exceptions.NotFound:
            raise SmcError("no smc_predictor Bento built yet: materialize bento_artifact (promotion_job)") from None
        os.environ["MODEL_TAG"] = bento.info.labels["model_tag"]
        target = str(bento.tag)
    settings = ServiceSettings.from_env()  # a bad setting fails here, with its name, before BentoML starts
    os.chdir(Path(__file__).resolve().parent.parent)
    executable = Path(sys.executable).parent / "bentoml"
    os.execv(str(executable), [str(executable), "serve", target, "--host", settings.host, "--port", str(settings.port)])


@cli.command()
@click.option("--symbol", required=True, help="Symbol whose stored bars are replayed.")
@click.option("--day", required=True, help="Trading day to replay (YYYY-MM-DD).")
@click.option("--timeframe", default="1m", show_default=True)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The service.")
@click.option("--api-key", envvar="API_KEY", default="", help="Predict key [env API_KEY].")
def replay(symbol: str, day: str, timeframe: str, url: str, api_key: str) -> None:
    """Stream a stored trading day to the service bar by bar, like NinjaTrader, and report signals and P&L."""
    import json

    from smc_core.serving.replay import replay_stored_day

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bento" / "clients" / "python"))
    from smc_client import SmcClient

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            click.echo(f"replaying {symbol} {day}: {done}/{total} bars", err=True)

    with SmcClient(url, api_key, timeout=2.0) as client:
        report = replay_stored_day(_database(), symbol, _parse_date(day, "--day"), client.predict_payload,
                                   timeframe=timeframe, progress=progress)
    click.echo(json.dumps(report.summary(), default=str))


@cli.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True,
              help="The service, to measure the switch as clients see it.")
@click.option("--api-key", envvar="API_KEY", default="", help="Predict key [env API_KEY].")
@click.option("--symbol", default=None, help="Symbol whose newest stored bars make the probe request [default: first].")
@click.option("--timeframe", default="1m", show_default=True)
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds to wait for every response to carry the restored version.")
@click.option("--no-wait", is_flag=True, help="Move the alias and exit without measuring the switch.")
def rollback(url: str, api_key: str, symbol: str | None, timeframe: str, timeout: float, no_wait: bool) -> None:
    """Move the champion alias back to the previous version and measure until every response carries it."""
    from smc_core.promotion import rollback as rollback_alias
    from smc_core.registry import MODEL_NAME, TrackingConfig, configure
    from smc_core.serving.replay import request_payload
    from smc_core.serving.switchover import measure_switchover
    from smc_core.store import load_bars

    settings = _settings()
    configure(TrackingConfig.from_settings(settings))
    db = _database()
    payload = None
    if not no_wait:
        payload = _probe_request(db, symbol, timeframe, load_bars, request_payload)
    rolled_back, restored = rollback_alias(db)
    moved_at = time.monotonic()
    expected = f"{MODEL_NAME}/{restored}"
    click.echo(f"champion alias: {MODEL_NAME}/{rolled_back} → {expected} (recorded in model_promotions)")
    if no_wait:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bento" / "clients" / "python"))
    from smc_client import ServiceError, SmcClient

    with SmcClient(url, api_key, timeout=2.0, retry_delays=()) as client:  # a retried failure still counts
        def probe() -> dict:
            try:
                return client.predict_payload(payload)
            except ServiceError as error:
                raise SmcError(str(error)) from None

        report = measure_switchover(probe, expected, moved_at, timeout_s=timeout)
    click.echo(f"{url}: {report.summary()}")
    if report.seconds is None or report.failures:
        raise SmcError(f"rollback moved the alias, but the service at {url} did not switch cleanly: {report.summary()}")


def _probe_request(db, symbol, timeframe, load_bars, request_payload) -> dict:
    """A valid /predict request from the newest stored bars (what a live client would send)."""
    import pandas as pd

    with db.connection() as connection:
        row = connection.execute(
            "SELECT symbol, max(ts) FROM bars WHERE timeframe = %s AND (%s::text IS NULL OR symbol = %s) "
            "GROUP BY symbol ORDER BY symbol LIMIT 1", (timeframe, symbol, symbol)).fetchone()
    if row is None:
        raise SmcError(f"no stored {timeframe} bars{' for ' + symbol if symbol else ''} to build a probe request "
                       "from: ingest bars first, or use --no-wait")
    last = pd.Timestamp(row[1])
    bars = load_bars(db, row[0], timeframe, last - pd.Timedelta(minutes=1), last, history=48)
    return request_payload(bars, row[0], timeframe)


def _parse_date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SmcError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def main() -> None:
    try:
        cli(standalone_mode=False)
    except RejectedRowsError as exc:
        for rejection in exc.rejections[:_MAX_LISTED]:
            click.echo(f"rejected {rejection}", err=True)
        if len(exc.rejections) > _MAX_LISTED:
            click.echo(f"… and {len(exc.rejections) - _MAX_LISTED} more rejected rows", err=True)
        click.echo(f"error: {len(exc.rejections)} rejected rows in {exc.path}; nothing was written "
                   "(fix the file or pass --skip-invalid)", err=True)
        sys.exit(1)
    except SmcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
