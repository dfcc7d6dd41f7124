"""The ``bars`` asset: one symbol × trading day of OHLCV bars, loaded from the landing folder.

Materializing a partition reads the landing files that cover that day, validates them,
writes the day in one transaction (idempotently), and then checks what is stored:
OHLC integrity, conflicting duplicates across files, and coverage of the session.
A partition with no landing file is still checked against what the database holds
(bars ingested with ``smc ingest``), so backfills work over history loaded either way.
"""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from smc_assets.partitions import BAR_PARTITIONS
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core import landing as landing_folder
from smc_assets.common import PartitionLog, checked, combined, partitions_of
from smc_core import quality
from smc_core.errors import RejectedRowsError
from smc_core.store import missing_day

_MAX_LISTED_REJECTIONS = 20

CHECKS = [
    AssetCheckSpec("ohlc_integrity", asset="bars", blocking=True,
                   description="No stored bar breaks high ≥ max(open, close) ≥ min(open, close) ≥ low, "
                               "volume ≥ 0, finiteness, or the timeframe grid."),
    AssetCheckSpec("no_conflicting_duplicates", asset="bars", blocking=True,
                   description="No bar time appears in two landing files with different values."),
    AssetCheckSpec("session_coverage", asset="bars",
                   description="Bars cover the trading session (missing share ≤ max_missing_ratio) "
                               "and none lie outside it."),
]


@asset(
    partitions_def=BAR_PARTITIONS,
    check_specs=CHECKS,
    group_name="market_data",
    kinds={"postgres"},
    description=__doc__,
)
def bars(context: AssetExecutionContext, database: DatabaseResource, landing: LandingResource) -> MaterializeResult:
    db = database.database()
    if landing.folder.is_dir():  # without one, the bars come from `smc ingest` or the service
        scan = landing_folder.scan(db, landing.folder, timeframe=landing.timeframe, tz=landing.timezone)
        for path, problem in scan.problems.items():
            context.log.warning(f"landing file skipped: {problem}")
    partitions = partitions_of(context)
    log = PartitionLog(context, len(partitions))
    return combined([(f"{day}|{symbol}", _bars_day(context, log, db, landing, symbol, day))
                     for symbol, day in partitions],
                    additive=("files", "stored_bars", "rows_read", "rows_inserted", "rows_updated", "rows_rejected"))


def _bars_day(context: AssetExecutionContext, log: PartitionLog, db, landing: LandingResource, symbol: str, day) -> MaterializeResult:
    calendar = checked(lambda: landing.calendar(symbol))
    files = landing_folder.files_for(db, symbol, day, landing.timeframe)

    metadata: dict = {"symbol": symbol, "trading_day": day.isoformat(), "files": len(files),
                      "calendar": calendar.name}
    duplicates = conflicts = 0
    conflict_examples: list[str] = []
    if files:
        log.info(f"loading {symbol} {day} from {len(files)} file(s): {', '.join(f.path.name for f in files)}")
        try:
            loaded = landing_folder.ingest_trading_day(
                db, files, symbol=symbol, day=day, timeframe=landing.timeframe, tz=landing.zone(symbol),
                calendar=calendar, skip_invalid=landing.skip_invalid, dagster_run_id=context.run.run_id,
                partition_key=f"{day}|{symbol}",
            )
        except RejectedRowsError as exc:
            listed = "\n".join(str(r) for r in exc.rejections[:_MAX_LISTED_REJECTIONS])
            more = len(exc.rejections) - _MAX_LISTED_REJECTIONS
            raise Failure(
                description=f"{len(exc.rejections)} rejected rows in {exc.path}; nothing was written "
                            f"(set landing.skip_invalid to load the valid rows)\n{listed}"
                            + (f"\n… and {more} more" if more > 0 else ""),
                metadata={"file": exc.path, "rejected_rows": len(exc.rejections), "ingest_id": exc.ingest_id},
            ) from None
        report = loaded.report
        duplicates, conflicts, conflict_examples = loaded.duplicate_bars, loaded.conflicting_bars, loaded.conflict_examples
        metadata.update({
            "ingest_id": report.ingest_id, "rows_read": report.rows_read, "rows_inserted": report.rows_inserted,
            "rows_updated": report.rows_updated, "rows_unchanged": report.rows_unchanged,
            "rows_rejected": report.rows_rejected,
            "source_files": MetadataValue.json([str(p) for p in loaded.files]),
        })
        log.info(report.summary())
    else:
        log.info(f"no landing file covers {symbol} {day}; checking the bars already stored")

    stored = quality.load_day(db, symbol, landing.timeframe, day, calendar)
    expected = calendar.expected_closes(day, landing.width())
    if stored.empty and len(expected) and not files:
        raise Failure(description=f"no bars for {symbol} on {day}: no file in {landing.folder} covers it, and "
                                  f"{missing_day(db, symbol, landing.timeframe, day, calendar)}")
    integrity = quality.integrity(stored, landing.width())
    cover = quality.coverage(stored, day, landing.width(), calendar)
    metadata.update({"stored_bars": len(stored), "session": _session_note(calendar, day)})
    if len(stored):
        metadata.update({"first_bar_close": stored["ts"].iloc[0].isoformat(),
                         "last_bar_close": stored["ts"].iloc[-1].isoformat()})
    if cover.out_of_session:
        note = (f"{cover.out_of_session} of {cover.stored} stored bars of {symbol} lie outside every session of the "
                f"{calendar.name} calendar (first: {', '.join(cover.outside_examples)}): a wrong time zone or "
                f"calendar for this symbol (instruments file), or bars of a halt")
        if landing.out_of_session == "fail":
            raise Failure(description=f"{note}; out_of_session is 'fail' (SMC_OUT_OF_SESSION)")
        log.warning(f"{note}; they are {landing.out_of_session}d (SMC_OUT_OF_SESSION)")

    return MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(
                check_name="ohlc_integrity", passed=integrity.passed, severity=AssetCheckSeverity.ERROR,
                metadata={"rows": integrity.rows, "ohlc_violations": integrity.ohlc_violations,
                          "off_grid_timestamps": integrity.off_grid},
            ),
            AssetCheckResult(
                check_name="no_conflicting_duplicates", passed=conflicts == 0, severity=AssetCheckSeverity.ERROR,
                metadata={"identical_duplicates": duplicates, "conflicting_duplicates": conflicts,
                          "conflict_examples": MetadataValue.json(conflict_examples)},
            ),
            AssetCheckResult(
                check_name="session_coverage",
                passed=cover.missing_ratio <= landing.max_missing_ratio and cover.out_of_session == 0,
                severity=AssetCheckSeverity.WARN,
                description=f"{cover.missing} of {cover.expected} session bars missing ({cover.missing_ratio:.1%}, "
                            f"at most {landing.max_missing_ratio:.1%} expected), {cover.out_of_session} outside "
                            "every session",
                metadata={"expected_bars": cover.expected, "present_bars": cover.present,
                          "missing_bars": cover.missing, "missing_ratio": round(cover.missing_ratio, 6),
                          "largest_gap_bars": cover.largest_gap_bars, "stored_bars": cover.stored,
                          "in_session_bars": cover.stored - cover.out_of_session,
                          "out_of_session_bars": cover.out_of_session,
                          "out_of_session_examples": MetadataValue.json(cover.outside_examples),
                          "out_of_session_policy": landing.out_of_session,
                          "session": _session_note(calendar, day),
                          "first_missing": MetadataValue.json(cover.first_missing)},
            ),
        ],
    )


def _session_note(calendar, day) -> str:
    """The session as the calendar has it: its hours in the calendar's zone, an early close, or none."""
    if not calendar.is_trading_day(day):
        return f"no session ({day:%A}: weekend or holiday on the {calendar.name} calendar)"
    start, end = (t.tz_convert(calendar.tz) for t in calendar.session_bounds(day))
    note = f"{start:%a %H:%M} to {end:%a %H:%M} {calendar.tz}"
    if end - start < calendar.session_length():
        note += " (shortened: early close or late open)"
    return note
