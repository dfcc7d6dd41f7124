"""What ``smc ingest`` and ``smc backfill`` do in Dagster: register symbols as partitions, keep
the partition range on the data, and materialize a range of partitions with a summary.

Why in process, and many days per run: a partition run is about a second of work, and a Dagster CLI process per
partition spent forty more importing the code location. The runs execute here against the
home's Dagster instance (``DAGSTER_HOME``, default ``$SMC_HOME/dagster``), so each one, its
checks and its materializations are recorded there and shown in the Dagster UI, tagged
``smc/backfill`` with the backfill's id.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import pandas as pd

from smc_core.db import Database
from smc_core.errors import ConfigError, SmcError
from smc_core.instruments import instrument
from smc_core.settings import Settings, read_home_settings, write_home_settings

BACKFILL_TAG = "smc/backfill"


def dagster_instance(settings: Settings):
    """The home's Dagster instance: ``DAGSTER_HOME``, else ``$SMC_HOME/dagster``; created when missing
    (Dagster refuses a DAGSTER_HOME that does not exist yet)."""
    from dagster import DagsterInstance

    from smc_jobs.demo import ensure_dagster_home

    home = Path(os.environ.get("DAGSTER_HOME") or settings.smc_home / "dagster").expanduser().resolve()
    ensure_dagster_home(home)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def stored_days(db: Database, symbol: str, timeframe: str) -> tuple[date, date] | None:
    """First and last trading day of ``symbol``'s stored bars at ``timeframe`` (its calendar's)."""
    with db.connection() as connection:
        first, last = connection.execute("SELECT min(ts), max(ts) FROM bars WHERE symbol = %s AND timeframe = %s",
                                         (symbol, timeframe)).fetchone()
    if first is None:
        return None
    days = instrument(symbol).calendar().trading_day_of(pd.DatetimeIndex([pd.Timestamp(first), pd.Timestamp(last)]))
    return days[0].item(), days[1].item()


def fit_partitions_to_data(db: Database, settings: Settings, timeframe: str) -> str | None:
    """Partitions start where the data starts: set SMC_PARTITION_START in ``$SMC_HOME/settings.env``
    to the first trading day of any stored bars (and move a recorded SMC_PARTITION_END past the
    last), unless the environment sets them. What changed, or None."""
    with db.connection() as connection:
        symbols = [row[0] for row in connection.execute(
            "SELECT DISTINCT symbol FROM bars WHERE timeframe = %s", (timeframe,)).fetchall()]
    ranges = []
    for symbol in symbols:
        try:
            found = stored_days(db, symbol, timeframe)
        except ConfigError:  # bars of a symbol without a specification: not partitioned
            continue
        if found:
            ranges.append(found)
    if not ranges:
        return None
    first, last = min(r[0] for r in ranges), max(r[1] for r in ranges)
    recorded = read_home_settings(settings.smc_home)
    wanted = {}
    if "SMC_PARTITION_START" not in os.environ and recorded.get("SMC_PARTITION_START") != first.isoformat():
        wanted["SMC_PARTITION_START"] = first.isoformat()
    end = recorded.get("SMC_PARTITION_END")
    if "SMC_PARTITION_END" not in os.environ and end and date.fromisoformat(end) < last:
        wanted["SMC_PARTITION_END"] = last.isoformat()
    if not wanted:
        return None
    path = write_home_settings(settings.smc_home, wanted, "partition range of the stored bars (smc ingest)")
    return ", ".join(f"{name}={value}" for name, value in wanted.items()) + f" in {path}"


@dataclass
class RunOutcome:
    """One Dagster run of the backfill: one symbol's trading days ``first`` … ``last`` (``days`` of them)."""
    symbol: str
    first: date
    last: date
    days: int
    success: bool
    run_id: str
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    """Asset checks that did not pass (coverage, horizon fit, …), with their description."""

    @property
    def partitions(self) -> str:
        days = f"{self.first}" if self.first == self.last else f"{self.first}…{self.last}"
        return f"{days}|{self.symbol}"


@dataclass
class BackfillReport:
    backfill_id: str
    outcomes: list[RunOutcome]
    no_session: dict[str, int]
    """Days of the range without a session on each symbol's calendar (nothing to materialize)."""
    runs: int
    """Dagster runs started: one per outcome, and a failed range's run before its days' own."""

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> list[str]:
        total = sum(o.days for o in self.outcomes)
        failed = sum(o.days for o in self.failed)
        skipped = ", ".join(f"{s} {n}" for s, n in self.no_session.items() if n)
        lines = [f"backfill {self.backfill_id}: {total - failed} of {total} partition(s) materialized, {failed} failed "
                 f"({self.runs} run(s))" + (f"; days without a session skipped: {skipped}" if skipped else "")]
        for outcome in self.failed:
            lines.append(f"failed {outcome.partitions} (run {outcome.run_id}): {outcome.error}")
        warned = [o for o in self.outcomes if o.warnings]
        for outcome in warned[:20]:
            lines.append(f"warning {outcome.partitions}: {'; '.join(outcome.warnings)}")
        if len(warned) > 20:
            lines.append(f"… and {len(warned) - 20} more runs with warnings")
        return lines


BARS_PER_RUN = 10_000
"""How much one backfill run materializes by default: about this many bars (7 days of 1-minute
CME bars, 400 of hourly, every day of daily ones). A run per day spends most of its second in
Dagster's bookkeeping; a range in one run costs that once, and a failed range is re-run a day at a
time so that the summary still names each failing day."""


def days_per_run(symbol: str, timeframe: str) -> int:
    """The default run size for ``symbol`` at ``timeframe``: its sessions' bars up to ``BARS_PER_RUN``."""
    from smc_core.timeframe import parse_timeframe

    per_day = instrument(symbol).calendar().session_length() / parse_timeframe(timeframe)
    return max(1, int(BARS_PER_RUN // max(per_day, 1)))


def plan(db: Database, symbols: list[str], timeframe: str, start: date | None, end: date | None,
         partition_range: tuple[date, date]) -> tuple[list[tuple[str, date]], dict[str, int]]:
    """The (symbol, trading day) partitions of the range: each symbol's calendar's trading days from
    ``start`` (default: its first stored day) to ``end`` (default: its last)."""
    keys, no_session = [], {}
    lowest, highest = partition_range
    for symbol in symbols:
        calendar = instrument(symbol).calendar()
        stored = stored_days(db, symbol, timeframe)
        if stored is None and (start is None or end is None):
            raise SmcError(f"no stored {timeframe} bars for {symbol}: ingest them first (smc ingest FILE --symbol "
                           f"{symbol}), or give --start and --end")
        first, last = start or stored[0], end or stored[1]
        if first > last:
            raise ConfigError(f"--start {first} is after --end {last}")
        if first < lowest or last > highest:
            raise ConfigError(f"{symbol} {first} … {last} is outside the partitions {lowest} … {highest}: set "
                              f"SMC_PARTITION_START / SMC_PARTITION_END (smc ingest sets them to the stored data)")
        days = calendar.trading_days(first, last)
        no_session[symbol] = (last - first).days + 1 - len(days)
        keys += [(symbol, day) for day in days]
    return sorted(keys, key=lambda key: (key[1], key[0])), no_session


def chunks(keys: list[tuple[str, date]], size: Callable[[str], int]) -> list[tuple[str, list[date]]]:
    """Each symbol's days in runs of at most ``size(symbol)`` consecutive trading days, in day order."""
    runs = []
    for symbol in sorted({s for s, _ in keys}):
        days = sorted(day for s, day in keys if s == symbol)
        step = max(1, size(symbol))
        runs += [(symbol, days[i:i + step]) for i in range(0, len(days), step)]
    return sorted(runs, key=lambda run: (run[1][0], run[0]))


def run_backfill(definitions, instance, keys: list[tuple[str, date]], no_session: dict[str, int], *,
                 per_run: Callable[[str], int] = lambda symbol: 1, run_config: dict | None = None,
                 progress: Callable[[int, str], None] | None = None) -> BackfillReport:
    """Materialize ``market_data_job`` over ``keys``: each symbol's days in order (a day's features
    need the day before), ``per_run(symbol)`` days per run (a Dagster partition range); a range that
    fails is run again a day at a time, so each failing day is named and the others are kept."""
    from smc_assets.partitions import register_symbols

    register_symbols(instance, sorted({symbol for symbol, _ in keys}))
    job = definitions.resolve_job_def("market_data_job")
    backfill_id = uuid.uuid4().hex[:8]
    outcomes: list[RunOutcome] = []
    done = runs = 0
    for symbol, days in chunks(keys, per_run):
        if progress:
            progress(done, f"{days[0]}|{symbol}" if len(days) == 1 else f"{days[0]}…{days[-1]}|{symbol}")
        outcome = _run(job, instance, symbol, days, backfill_id, run_config)
        runs += 1
        if outcome.success or len(days) == 1:
            outcomes.append(outcome)
        else:
            for day in days:
                if progress:
                    progress(done, f"{day}|{symbol} (its range failed: a day at a time)")
                outcomes.append(_run(job, instance, symbol, [day], backfill_id, run_config))
                runs += 1
                done += 1
            continue
        done += len(days)
    if progress:
        progress(len(keys), "done")
    return BackfillReport(backfill_id, outcomes, no_session, runs)


def _run(job, instance, symbol: str, days: list[date], backfill_id: str, run_config: dict | None) -> RunOutcome:
    """One run of ``market_data_job`` over ``symbol``'s ``days`` (one partition, or the range they span)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from smc_assets.partitions import bar_partition_key
    from smc_jobs.local import QUIET, _merge, failure_message

    tags = {BACKFILL_TAG: backfill_id, "smc/trigger": "backfill"}
    single = len(days) == 1
    if not single:
        tags.update({ASSET_PARTITION_RANGE_START_TAG: str(bar_partition_key(symbol, days[0])),
                     ASSET_PARTITION_RANGE_END_TAG: str(bar_partition_key(symbol, days[-1]))})
    result = job.execute_in_process(
        partition_key=bar_partition_key(symbol, days[0]) if single else None, instance=instance,
        raise_on_error=False, run_config=_merge(QUIET, run_config or {}), tags=tags)
    warnings = [f"{e.check_name}: {e.description or 'did not pass'}" for e in result.get_asset_check_evaluations()
                if not e.passed]
    return RunOutcome(symbol, days[0], days[-1], len(days), result.success, result.run_id,
                      None if result.success else failure_message(result), warnings)
