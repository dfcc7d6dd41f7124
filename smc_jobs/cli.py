"""The ``smc`` command line: database, ingest, synthetic data, the demo pipeline and serving.

Every failure a user can cause prints one line (``error: <what is wrong, and where>``) and
exits non-zero, never a traceback: a trader running this next to a live account must see
what to fix, not where the code was. ``--debug`` (or ``LOG_LEVEL=DEBUG``) shows the
traceback for the rare unexpected error. Rejected rows are listed one per line first;
nothing is written when a command fails. Ctrl-C exits 130 with one line.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from datetime import date
from pathlib import Path

import click

from smc_core.errors import ConfigError, RejectedRowsError, SmcError
from smc_core.settings import Settings
from smc_jobs import progress as bars
from smc_jobs.train import TrainRequest

_MAX_LISTED = 50
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CLIENT_DIR = Path(__file__).resolve().parent.parent / "bento" / "clients" / "python"


def _settings() -> Settings:
    return Settings.from_env()


def _database(migrated: bool = True):
    """The project database, closed when the command ends (also on errors and Ctrl-C): an
    unclosed pool is joined by its finalizer at interpreter exit, which may run on one of its
    own worker threads and print "cannot join current thread" (psycopg/psycopg#1043)."""
    from smc_core.db import Database
    from smc_core.migrations import migrate

    database = click.get_current_context().with_resource(Database.from_settings(_settings()))
    if migrated:
        migrate(database)
    return database


def _client(url: str, api_key: str, **kwargs):
    """The vendorable Python client (bento/clients/python), closed when the command ends."""
    if str(_CLIENT_DIR) not in sys.path:
        sys.path.insert(0, str(_CLIENT_DIR))
    from smc_client import SmcClient

    return click.get_current_context().with_resource(SmcClient(url, api_key, **kwargs))


def _service_error(error, url: str) -> SmcError:
    """One line for a failed request, saying what to do about it."""
    if error.status == 0:
        reason = "connection refused" if error.error == "ConnectError" else f"{error.error}: {error.details}"
        return SmcError(f"no answer from the service at {url} ({reason}; {error.attempts} attempt"
                        f"{'s' if error.attempts != 1 else ''}): start it with `smc serve` "
                        "(`smc serve --dev` for a keyless local one), or point --url at it")
    if error.status in (401, 403):
        return SmcError(f"the service at {url} refused the API key ({error}): pass --api-key or set API_KEY")
    if error.status == 503:
        return SmcError(f"the service at {url} is not ready ({error}): is a champion registered? "
                        "see its log or GET /readyz")
    return SmcError(f"the service at {url} answered {error}")


def _check_timeframe(ctx, param, value: str) -> str:
    """Refuse ``1x`` before any work, listing the valid forms."""
    from smc_core.timeframe import parse_timeframe

    if value is None:  # the setting (SMC_TIMEFRAME) applies
        return value
    try:
        parse_timeframe(value)
    except ConfigError as error:
        raise click.BadParameter(str(error)) from None
    return value


def _set_debug(ctx, param, value: bool) -> None:
    if value:
        os.environ["LOG_LEVEL"] = "DEBUG"  # also for what this command starts (bentoml serve)
        logging.getLogger().setLevel(logging.DEBUG)


def _debug_option(function):
    """``--debug`` on the group and on every command: users add it where the hint says, at the end."""
    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Debug logs, and the traceback of an unexpected error (LOG_LEVEL=DEBUG).")(function)


def _quiet_option(function):
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress bar (bars are drawn only when stderr is a terminal).")(function)


def _debugging() -> bool:
    return os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="smc-mlops")
@_debug_option
def cli() -> None:
    """SMC MLOps: NinjaTrader bars → features → LoRA model → gates → BentoML.

    Settings come from the environment (DATABASE_URL, SMC_HOME, HOST, PORT, API_KEY, LOG_LEVEL;
    see README "Configuration"). Errors are one line; --debug shows the traceback of an
    unexpected one.

    \b
    Examples:
      smc synth --days 5 --out data/            # sample NinjaTrader exports
      smc ingest data/ES/*.txt --symbol ES      # load them
      smc demo                                  # the whole lineage and the loop
      smc serve --dev --port 8000               # the /predict service, keyless
      smc replay --symbol ES --day 2024-01-03   # a stored day through the service
      smc signals consume --group desk          # every served signal, exactly once (REDIS_URL)
    """
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={level!r} is not one of {', '.join(_LOG_LEVELS)}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- db --------------------------------------------------------------------------------

@cli.group(epilog="""\b
Examples:
  smc db status     # which database, storage mode, each migration's state
  smc db migrate    # apply what is pending""")
def db() -> None:
    """Database schema: migrate and inspect (DATABASE_URL, else the embedded server under SMC_HOME)."""


@db.command("migrate", epilog="""\b
Examples:
  smc db migrate
  DATABASE_URL=postgresql://smc@db-host/smc smc db migrate""")
@_debug_option
def db_migrate() -> None:
    """Apply pending migrations (sql/NNN_*.sql), each once, in order."""
    from smc_core.db import redact
    from smc_core.migrations import migrate, storage_mode

    database = _database(migrated=False)
    applied = migrate(database)
    for migration in applied:
        click.echo(f"applied {migration.path.name}")
    click.echo(f"{redact(database.url)}: schema up to date ({len(applied)} applied now, "
               f"storage {storage_mode(database)})")


@db.command("status", epilog="""\b
Examples:
  smc db status
  DATABASE_URL=postgresql://smc@db-host/smc smc db status""")
@_debug_option
def db_status() -> None:
    """Show the database, its storage mode and each migration's state."""
    from smc_core.db import redact
    from smc_core.migrations import status, storage_mode

    database = _database(migrated=False)
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

@cli.command(epilog="""\b
Examples:
  smc ingest "ES 03-25.Last.txt" --symbol ES                 # NinjaTrader export, 1-minute bars
  smc ingest bars.csv bars.parquet --symbol NQ --tz America/New_York
  smc ingest exports/*.txt --symbol ES --timeframe 5m --skip-invalid
  SMC_TIMEFRAME=1h smc ingest eurusd_1h.csv --symbol EURUSD   # a symbol of your instruments file""")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--symbol", required=True, help="Instrument root, e.g. ES (built-in, or in your instruments file).")
@click.option("--timeframe", default=None, callback=_check_timeframe,
              help="Bar width: <n><s|m|h|d> [default: SMC_TIMEFRAME, 1m].")
@click.option("--tz", default=None, help="Time zone of naive timestamps [default: the instrument's].")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "ninjatrader", "csv", "parquet"]))
@click.option("--skip-invalid", is_flag=True, help="Write the valid rows; record rejected ones in the ingest log.")
@_quiet_option
@_debug_option
def ingest(paths: tuple[Path, ...], symbol: str, timeframe: str, tz: str | None, fmt: str, skip_invalid: bool,
           quiet: bool) -> None:
    """Validate and load bar files (NinjaTrader export, CSV or Parquet), each atomically.

    A failing file stops the command; the files reported before it are loaded, it and the
    ones after it are not. Then the symbol becomes a Dagster partition and the partitions
    start where the stored data starts (SMC_PARTITION_START in $SMC_HOME/settings.env).
    """
    from smc_core.errors import BarFileError
    from smc_core.ingest import check_symbol, ingest_file
    from smc_core.instruments import instrument

    check_symbol(symbol)
    settings = _settings()
    timeframe = timeframe or settings.timeframe
    zone = tz or instrument(symbol).zone  # an unknown symbol stops here, naming the file to edit
    for path in paths:  # every file is named before the database is touched
        if not path.is_file():
            raise BarFileError(path, "no such file" if not path.exists() else "not a file")
    database = _database()
    sizes = [path.stat().st_size for path in paths]
    # by bytes, so a big file moves the bar as much as its share of the work
    with bars.bar("ingest", sum(sizes), on=bars.enabled(quiet), count=False) as shown:
        for index, path in enumerate(paths):
            started = time.perf_counter()
            done = sum(sizes[:index])
            report = ingest_file(database, path, symbol, timeframe, tz=zone, fmt=fmt, skip_invalid=skip_invalid,
                                 progress=lambda phase: shown.set(done, f"{path.name}: {phase}"))
            shown.set(done + sizes[index])
            for rejection in report.rejections[:_MAX_LISTED]:
                shown.echo(f"skipped {rejection}", err=True)
            shown.echo(f"{report.summary()} in {time.perf_counter() - started:.2f}s")
    _register_partitions(database, settings, symbol, timeframe)


def _register_partitions(database, settings: Settings, symbol: str, timeframe: str) -> None:
    from smc_assets.partitions import register_symbols
    from smc_jobs.backfill import dagster_instance, fit_partitions_to_data

    if register_symbols(dagster_instance(settings), [symbol]):
        click.echo(f"{symbol} added to the Dagster partitions (symbols)")
    changed = fit_partitions_to_data(database, settings, timeframe)
    if changed:
        click.echo(f"partitions follow the stored data: {changed}")


# --- backfill ----------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  smc backfill --symbols ES                           # every stored day of ES (SMC_TIMEFRAME)
  smc backfill --symbols ES,NQ --start 2024-03-01 --end 2024-03-29
  SMC_TIMEFRAME=1h smc backfill --symbols EURUSD
  smc backfill --symbols ES --days-per-run 1          # one Dagster run per partition""")
@click.option("--symbols", required=True, help="Comma-separated symbols.")
@click.option("--start", default=None, help="First trading day (YYYY-MM-DD) [default: each symbol's first stored].")
@click.option("--end", default=None, help="Last trading day (YYYY-MM-DD) [default: each symbol's last stored].")
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML/JSON run config for market_data_job (e.g. ops.labels.config.horizons).")
@click.option("--days-per-run", type=click.IntRange(min=1), default=None,
              help="Trading days one Dagster run materializes (a partition range) [default: about 10,000 bars' "
                   "worth at the timeframe; 1 for a run per partition]. A range that fails is re-run a day at a time.")
@_quiet_option
@_debug_option
def backfill(symbols: str, start: str | None, end: str | None, config_path: Path | None, days_per_run: int | None,
             quiet: bool) -> None:
    """Materialize bars, features and labels for every trading day of a range through the home's
    Dagster instance, many days per run (each run shown in the Dagster UI, tagged smc/backfill);
    prints what failed and why, exits 1 when any partition failed."""
    from smc_assets.partitions import requestable_days
    from smc_core.monitoring import run_config_file
    from smc_jobs.backfill import dagster_instance, days_per_run as default_days, plan, run_backfill
    from smc_jobs.definitions import build_definitions

    settings = _settings()
    names = [name.strip().upper() for name in symbols.split(",") if name.strip()]
    first, last = (_day_option(name, value) for name, value in (("--start", start), ("--end", end)))
    run_config = run_config_file(str(config_path) if config_path else None, "--config")
    database = _database()
    keys, no_session = plan(database, names, settings.timeframe, first, last, requestable_days())
    instance = dagster_instance(settings)
    click.echo(f"backfilling {len(keys)} partition(s) of {', '.join(names)} at {settings.timeframe} through the Dagster "
               f"instance {instance.root_directory}")
    with bars.bar("backfill", len(keys), on=bars.enabled(quiet)) as shown:
        report = run_backfill(build_definitions(settings), instance, keys, no_session, run_config=run_config,
                              per_run=lambda symbol: days_per_run or default_days(symbol, settings.timeframe),
                              progress=lambda done, note: shown.set(done, note))
    for line in report.summary():
        click.echo(line)
    if report.failed:
        sys.exit(1)


def _day_option(name: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None


# --- synthetic data ----------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  smc synth --days 20 --out data/                     # data/ES/ES 2024-01-02.Last.txt, ...
  smc synth --days 60 --out data/ --symbol NQ --edge smc --format parquet""")
@click.option("--days", default=5, show_default=True, type=click.IntRange(1, 5000), help="Trading days to generate.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--symbol", default="ES", show_default=True)
@click.option("--start", default="2024-01-02", show_default=True, help="First calendar day considered.")
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--edge", default="none", show_default=True, type=click.Choice(["none", "smc", "smc_reversed"]),
              help="Plant a learnable SMC setup edge, or none.")
@click.option("--format", "fmt", default="ninjatrader", show_default=True,
              type=click.Choice(["ninjatrader", "csv", "parquet"]))
@_debug_option
def synth(days: int, out_dir: Path, symbol: str, start: str, seed: int, edge: str, fmt: str) -> None:
    """Generate realistic synthetic 1-minute futures bars, one file per trading day."""
    from smc_core.ingest import check_symbol
    from smc_core.synthetic import Instrument, SyntheticConfig, write_synthetic

    check_symbol(symbol)
    config = SyntheticConfig(days=days, start=_parse_date(start, "--start"), seed=seed, edge=edge,
                             instrument=Instrument(symbol=symbol))
    paths = write_synthetic(config, out_dir, fmt=fmt, tz=_settings().exchange_tz)
    click.echo(f"wrote {len(paths)} files for {symbol} to {out_dir / symbol}")


# --- training ------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  smc train --out models/local                    # one process
  smc train --out models/ddp --nproc 2            # two processes with torchrun (gloo on CPU, NCCL on GPUs)
  smc train --out models/es --symbols ES --epochs 5 --base-epochs 2""")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for the package (OUT/package) and its training summary (OUT/training.json).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes that share every batch (torchrun; DistributedDataParallel).")
@click.option("--timeframe", default=TrainRequest.timeframe, show_default=True, callback=_check_timeframe)
@click.option("--symbols", default="", help="Comma-separated symbols [default: all with stored features].")
@click.option("--horizon", default=None, help="Stored labels to learn, e.g. h15_u1.5_d1.5 [default: the default horizon].")
@click.option("--epochs", default=TrainRequest.epochs, show_default=True, type=click.IntRange(1, 10_000),
              help="Maximum LoRA epochs (early stopping on validation loss).")
@click.option("--base-epochs", default=TrainRequest.base_epochs, show_default=True, type=click.IntRange(0, 10_000))
@click.option("--batch-size", default=TrainRequest.batch_size, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Global batch, split across the processes.")
@click.option("--seed", default=TrainRequest.seed, show_default=True, type=int)
@click.option("--lora-dropout", default=TrainRequest.lora_dropout, show_default=True, type=click.FloatRange(0, 0.9),
              help="0 makes N processes compute what one does (each process draws its own dropout masks).")
@_debug_option
def train(out_dir: Path, nproc: int, timeframe: str, symbols: str, horizon: str | None, epochs: int, base_epochs: int,
          batch_size: int, seed: int, lora_dropout: float) -> None:
    """Pretrain a base and fine-tune LoRA on the stored features and labels; write the package."""
    from smc_jobs.train import launch

    if (out_dir / "package").exists() and any((out_dir / "package").iterdir()):
        raise SmcError(f"{out_dir / 'package'} already holds a package: choose another --out")
    names = [s.strip().upper() for s in symbols.split(",") if s.strip()]
    request = TrainRequest(out=str(out_dir.resolve()), database_url=_database().url, timeframe=timeframe,
                           symbols=names, horizon=horizon, base_epochs=base_epochs, epochs=epochs, batch_size=batch_size, seed=seed,
                           lora_dropout=lora_dropout)
    summary = launch(request, nproc)
    click.echo(f"trained on {summary['processes']} process(es) in {summary['seconds']:.1f}s: best epoch "
               f"{summary['best_epoch']}, {summary['windows_per_second']:.0f} windows/s, temperature "
               f"{summary['temperature']:.3f}; package {out_dir / 'package'}")


# --- demo --------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  smc demo                               # two symbols, 26 days, then the regime change and retrain
  smc demo --no-loop --days 10           # stop after the first champion
  smc demo --symbols ES --edge none      # a market without an edge: the gates refuse""")
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
@_debug_option
def demo(days: int, symbols: str, start: str, edge: str, train: bool, loop: bool, new_days: int) -> None:
    """The whole lineage and the closed loop on sample data, in the embedded default setup."""
    from smc_jobs.demo import DemoPlan, run_demo

    names = tuple(s.strip().upper() for s in symbols.split(",") if s.strip())
    if not names:
        raise SmcError("--symbols names no symbol")
    sys.exit(run_demo(_settings(), DemoPlan(symbols=names, start=_parse_date(start, "--start"), days=days, edge=edge,
                                            train=train, loop=loop, new_days=new_days)))


# --- serving -------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  smc serve --dev                          # keyless, on HOST:PORT (127.0.0.1:8000 unless set)
  smc serve --host 0.0.0.0 --port 8080     # API_KEY and ADMIN_API_KEY set in the environment
  smc serve --bento                        # the latest built Bento, model packed in it""")
@click.option("--dev", is_flag=True, help="Serve without API keys (local use only; SMC_DEV_MODE=1).")
@click.option("--bento", "from_bento", is_flag=True,
              help="Serve the latest built Bento (bento_artifact) with the model packed in it, not the source.")
@click.option("--host", default=None,
              help="Interface to listen on [default: HOST, else the service's default 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on [default: PORT, else the service's default 8000].")
@_debug_option
def serve(dev: bool, from_bento: bool, host: str | None, port: int | None) -> None:
    """Serve /predict with BentoML (the champion followed live, MODEL_PATH, or --bento).

    --host/--port override HOST/PORT; the service reads its defaults from the same settings.
    """
    from smc_core.serving.runtime import ServiceSettings

    if dev:
        os.environ["SMC_DEV_MODE"] = "1"
    if host is not None:
        os.environ["HOST"] = host
    if port is not None:
        os.environ["PORT"] = str(port)
    settings = ServiceSettings.from_env()  # a bad setting fails here, with its name, before BentoML starts
    for path in settings.model_paths:
        if not path.exists():
            raise SmcError(f"MODEL_PATH={path} does not exist: point it at a model package folder (one per "
                           "model line, comma-separated), or unset it to serve the registry's champion")
    _check_port_free(settings.host, settings.port)
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
    os.chdir(Path(__file__).resolve().parent.parent)
    executable = Path(sys.executable).parent / "bentoml"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(executable), [str(executable), "serve", target, "--host", settings.host, "--port", str(settings.port)])


def _check_port_free(host: str, port: int) -> None:
    """Say so now if HOST:PORT is taken, rather than as a traceback from inside BentoML."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise SmcError(f"cannot listen on {host}:{port}: {error.strerror} (check --host / HOST)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as error:
            raise SmcError(f"cannot listen on {host}:{port}: {error.strerror} (another service there? "
                           "stop it, or pass --port)") from None


@cli.command(epilog="""\b
Examples:
  smc replay --symbol ES --day 2024-01-03                          # service on 127.0.0.1:8000
  smc replay --symbol NQ --day 2024-03-05 --url http://10.0.0.5:8080 --api-key "$API_KEY"
  smc replay --symbol ES --day 2024-01-03 --quiet > es-0103.json
  smc replay --symbol ES --day 2024-01-03 --timeframe 5m            # the 5-minute line""")
@click.option("--symbol", required=True, help="Symbol whose stored bars are replayed.")
@click.option("--day", required=True, help="Trading day to replay (YYYY-MM-DD).")
@click.option("--timeframe", default="1m", show_default=True, callback=_check_timeframe,
              help="Bar width of the stored series: <n><s|m|h|d>.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The service.")
@click.option("--api-key", envvar="API_KEY", default="", help="Predict key [env API_KEY].")
@_quiet_option
@_debug_option
def replay(symbol: str, day: str, timeframe: str, url: str, api_key: str, quiet: bool) -> None:
    """Stream a stored trading day to the service bar by bar, like NinjaTrader, and report signals and P&L.

    Prints one JSON line: requests, signals, versions seen, latency p50/p99, trades, net P&L.
    """
    import json

    from smc_core.ingest import check_symbol
    from smc_core.jsonable import plain
    from smc_core.instruments import instrument
    from smc_core.serving.replay import replay_stored_day
    from smc_core.settings import resampled_timeframes

    check_symbol(symbol)
    trading_day = _parse_date(day, "--day")
    database = _database()
    client = _client(url, api_key, timeout=2.0)
    from smc_client import ServiceError

    def predict(payload: dict) -> dict:
        try:
            return client.predict_payload(payload)
        except ServiceError as error:
            raise _service_error(error, url) from None

    shown = None  # the bar starts with the first answer, when the day's bar count is known

    def progress(done: int, total: int) -> None:
        nonlocal shown
        if shown is None:
            shown = bars.Bar(f"replay {symbol} {trading_day}", total, on=bars.enabled(quiet))
        shown.set(done)

    settings = _settings()  # a resampled timeframe (SMC_RESAMPLED) is replayed from the 1-minute bars, like its features
    resampled = timeframe in resampled_timeframes(settings.timeframe, settings.resampled, "SMC_RESAMPLED")
    try:
        report = replay_stored_day(database, symbol, trading_day, predict, timeframe=timeframe, progress=progress,
                                   resampled=resampled, calendar=instrument(symbol).calendar())
    finally:
        if shown is not None:
            shown.close()
    click.echo(json.dumps(plain(report.summary()), default=str))  # null, not NaN, for an undefined win rate


@cli.command(epilog="""\b
Examples:
  smc rollback --url http://127.0.0.1:8000 --api-key "$API_KEY"   # and measure the switch
  smc rollback --no-wait                                          # only move the alias
  smc rollback --model smc-lora-5m-h15                            # an added model line (probes on 5m)""")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True,
              help="The service, to measure the switch as clients see it.")
@click.option("--api-key", envvar="API_KEY", default="", help="Predict key [env API_KEY].")
@click.option("--symbol", default=None, help="Symbol whose newest stored bars make the probe request [default: first].")
@click.option("--timeframe", default=None, callback=_check_timeframe,
              help="Bar width of the probe request's series [default: the model line's].")
@click.option("--model", "model_name", default=None,
              help="The model line's registered model (smc-lora-5m-h15 …; SMC_MODEL_LINES) [default: smc-lora].")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds to wait for every response to carry the restored version.")
@click.option("--no-wait", is_flag=True, help="Move the alias and exit without measuring the switch.")
@_debug_option
def rollback(url: str, api_key: str, symbol: str | None, timeframe: str | None, model_name: str | None,
             timeout: float, no_wait: bool) -> None:
    """Move a model line's champion alias back to the previous version and measure until every response
    carries it."""
    from smc_core.promotion import rollback as rollback_alias
    from smc_core.registry import TrackingConfig, configure
    from smc_core.serving.replay import request_payload
    from smc_core.serving.switchover import measure_switchover
    from smc_core.store import load_bars

    settings = _settings()
    lines = {line.name: line for line in settings.model_lines()}
    line = lines.get(model_name or "smc-lora")
    if line is None:
        raise SmcError(f"--model {model_name}: no such model line; the lines are {', '.join(lines)} (SMC_MODEL_LINES)")
    timeframe = timeframe or line.timeframe or settings.timeframe
    configure(TrackingConfig.from_settings(settings))
    db = _database()
    payload = None
    if not no_wait:
        payload = _probe_request(db, symbol, timeframe, load_bars, request_payload,
                                 resampled=timeframe != settings.timeframe)
    rolled_back, restored = rollback_alias(db, name=line.name)
    moved_at = time.monotonic()
    expected = f"{line.name}/{restored}"
    click.echo(f"champion alias: {line.name}/{rolled_back} → {expected} (recorded in model_promotions)")
    if no_wait:
        return
    client = _client(url, api_key, timeout=2.0, retry_delays=())  # a retried failure still counts
    from smc_client import ServiceError

    def probe() -> dict:
        try:
            return client.predict_payload(payload)
        except ServiceError as error:
            raise _service_error(error, url) from None

    report = measure_switchover(probe, expected, moved_at, timeout_s=timeout)
    click.echo(f"{url}: {report.summary()}")
    if report.seconds is None or report.failures:
        raise SmcError(f"rollback moved the alias, but the service at {url} did not switch cleanly: {report.summary()}")


@cli.command(epilog="""\b
Examples:
  smc halt --reason "FOMC in 5 minutes"              # every symbol
  smc halt --symbol ES --symbol NQ --reason "feed"   # two symbols
  smc halt --status                                  # what is halted, and the last events""")
@click.option("--symbol", "symbols", multiple=True, help="A symbol to halt (repeat for several) [default: all].")
@click.option("--reason", default=None, help="Why (recorded with the halt); required unless --status.")
@click.option("--status", is_flag=True, help="Only show the halts in force and the latest halt/resume events.")
@_debug_option
def halt(symbols: tuple[str, ...], reason: str | None, status: bool) -> None:
    """Stop trading: the service answers skip for these symbols (or all) within HALT_POLL_SECONDS.

    The halt is written to the database (trading_halts) that every service polls, and stays
    until `smc resume`, across restarts of the service and outages of the database."""
    from smc_core.safety import halt as halt_symbols, halt_events, read_halts

    db = _database()
    if not status:
        if not reason:
            raise click.UsageError("--reason is required: say why, it is recorded with the halt")
        halt_symbols(db, list(symbols) or None, reason, "cli")
    _show_halts(read_halts(db), halt_events(db, limit=10) if status else [])


@cli.command(epilog="""\b
Examples:
  smc resume --reason "checked the feed"             # lift every halt
  smc resume --symbol ES --reason "spread normal"    # ES only (a halt of all still applies)""")
@click.option("--symbol", "symbols", multiple=True, help="A symbol to resume (repeat for several) [default: every "
                                                         "halt].")
@click.option("--reason", required=True, help="Why trading may resume (recorded).")
@_debug_option
def resume(symbols: tuple[str, ...], reason: str) -> None:
    """Trade again: lift the halts of these symbols (or every halt), breaker halts included."""
    from smc_core.safety import read_halts, resume as resume_symbols

    db = _database()
    resume_symbols(db, list(symbols) or None, reason, "cli")
    _show_halts(read_halts(db), [])


def _show_halts(state, events: list[dict]) -> None:
    if not state.halts:
        click.echo("trading: not halted")
    for scope, item in sorted(state.halts.items()):
        click.echo(f"halted {'ALL SYMBOLS' if scope == '*' else scope} since {item.since:%Y-%m-%d %H:%M:%S %Z} "
                   f"by {item.source}: {item.reason}")
    for event in events:
        click.echo(f"  {event['at']:%Y-%m-%d %H:%M:%S} {event['action']:<6} "
                   f"{'all' if event['scope'] == '*' else event['scope']:<6} {event['source']:<8} {event['reason']}")


# --- signals ---------------------------------------------------------------------------

@cli.group(epilog="""\b
Examples:
  REDIS_URL=redis://127.0.0.1:6379/0 smc signals consume --group desk""")
def signals() -> None:
    """The signal stream (REDIS_URL): consumers that handle every served signal exactly once."""


@signals.command("consume", epilog="""\b
Examples:
  smc signals consume --group desk                     # until Ctrl-C
  smc signals consume --group audit --echo | jq .      # and print each signal handled
  smc signals consume --group desk --idle-exit 10      # stop after 10 s without a signal""")
@click.option("--group", default="inbox", show_default=True, help="Consumer group; each group gets every signal.")
@click.option("--consumer", default=None, help="This consumer's name in the group [default: host-pid].")
@click.option("--redis-url", envvar="REDIS_URL", default="", help="Redis holding the stream [env REDIS_URL].")
@click.option("--limit", type=click.IntRange(1, None), default=None, help="Stop after handling this many signals.")
@click.option("--idle-exit", type=click.FloatRange(0.1, None), default=None,
              help="Stop when no signal came for this many seconds.")
@click.option("--echo", is_flag=True, help="Print each signal handled as one JSON line (at least once: a crash "
                                           "between the print and the commit prints it again).")
@_debug_option
def signals_consume(group: str, consumer: str | None, redis_url: str, limit: int | None, idle_exit: float | None,
                    echo: bool) -> None:
    """Read the stream as GROUP and record every signal once in the database's signal_inbox.

    Acknowledged only after the inbox row committed; messages a dead consumer left pending are
    reclaimed after SIGNALS_CLAIM_IDLE_MS; a signal delivered twice is recognised by its request
    id and not recorded again. Prints what it did as one JSON line at the end."""
    import dataclasses
    import json

    from smc_core.signals import PostgresInbox, SignalConsumer, SignalSettings, connect

    settings = dataclasses.replace(SignalSettings.from_env(), redis_url=redis_url or None)
    if not settings.redis_url:
        raise SmcError("no Redis to read from: set REDIS_URL (e.g. redis://127.0.0.1:6379/0) or pass --redis-url")
    database = _database()
    handler = (lambda signal, conn: click.echo(json.dumps(signal))) if echo else None
    consumer_loop = SignalConsumer(connect(settings.redis_url, timeout=10.0), settings, group,
                                   PostgresInbox(database, group), consumer=consumer, handler=handler)
    try:
        stats = consumer_loop.run(limit=limit, idle_exit_s=idle_exit)
    finally:
        click.echo(json.dumps({"group": group, "consumer": consumer_loop.consumer,
                               **dataclasses.asdict(consumer_loop.stats)}), err=echo)
    return stats


def _probe_request(db, symbol, timeframe, load_bars, request_payload, resampled: bool = False) -> dict:
    """A valid /predict request from the newest stored bars (what a live client would send);
    ``resampled``: of the database's resampling of the 1-minute bars."""
    import pandas as pd

    stored = "1m" if resampled else timeframe
    with db.connection() as connection:
        row = connection.execute(
            "SELECT symbol, max(ts) FROM bars WHERE timeframe = %s AND (%s::text IS NULL OR symbol = %s) "
            "GROUP BY symbol ORDER BY symbol LIMIT 1", (stored, symbol, symbol)).fetchone()
    if row is None:
        raise SmcError(f"no stored {stored} bars{' for ' + symbol if symbol else ''} to build a probe request "
                       "from: ingest bars first, or use --no-wait")
    last = pd.Timestamp(row[1])
    bars = load_bars(db, row[0], timeframe, last, last, history=49, resampled=resampled)  # the 49 newest (finished)
    return request_payload(bars, row[0], timeframe)


def _parse_date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SmcError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure ends here as one ``error:`` line and a non-zero exit.

    Exit codes: 0 done, 1 error, 2 wrong usage (click's convention), 130 Ctrl-C.
    """
    try:
        cli.main(argv, prog_name="smc", standalone_mode=False)
    except RejectedRowsError as exc:
        for rejection in exc.rejections[:_MAX_LISTED]:
            click.echo(f"rejected {rejection}", err=True)
        if len(exc.rejections) > _MAX_LISTED:
            click.echo(f"… and {len(exc.rejections) - _MAX_LISTED} more rejected rows", err=True)
        logged = f", the attempt is ingest #{exc.ingest_id}" if exc.ingest_id is not None else ""
        _fail(f"{len(exc.rejections)} rejected rows in {exc.path}; nothing was written{logged} "
              "(fix the file or pass --skip-invalid)", 1)
    except SmcError as exc:
        _fail(str(exc), 1)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        _fail("interrupted (Ctrl-C)", 130, show_traceback=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "smc"
        _fail(f"{exc.format_message()} (see '{where} --help')", exc.exit_code, show_traceback=False)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `smc db status | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")
        sys.exit(1)
    except OSError as exc:  # a path the user named: missing, unreadable, not writable
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # a case this CLI does not know yet: still one line, the traceback on demand
        _fail(f"unexpected {type(exc).__name__}: {_one_line(exc)} (rerun with --debug or LOG_LEVEL=DEBUG for the "
              "traceback, and please report it)", 1)


def _fail(message: str, code: int, *, show_traceback: bool = True) -> None:
    if show_traceback and _debugging():
        traceback.print_exc()
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _one_line(text) -> str:
    return " ".join(str(text).split()) or "(no message)"


if __name__ == "__main__":
    main()
