"""The ``features`` asset: point-in-time SMC and technical features per symbol × trading day, for
the data's timeframe and each resampled one (``landing.resampled``: 5m … 1h from 1-minute bars).

A partition reads its day's bars plus the tail of the previous partition (the longest
lookback minus one bar), so computing day by day gives exactly the values of computing
the whole range at once. Checks: no NaN once the lookback is complete, and a causality
spot check that recomputes sampled rows from their lookback window alone — the same
computation the service performs on a request — and demands bit-identical values.
"""

import hashlib

import numpy as np
import pandas as pd
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

from smc_assets.bars import bars
from smc_assets.partitions import BAR_PARTITIONS
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.features import CATALOGUE, compute_features
from smc_assets.common import PartitionLog, checked, combined, partitions_of, per_timeframe, read_once
from smc_core.store import SessionBars, no_session_bars, write_features

SPOT_CHECKS = 25

CHECKS = [
    AssetCheckSpec("no_nan_after_warmup", asset="features", blocking=True,
                   description="Every feature is finite once its lookback is covered by stored bars."),
    AssetCheckSpec("causality_spot_check", asset="features", blocking=True,
                   description=f"{SPOT_CHECKS} sampled rows recomputed from their lookback window alone "
                               "equal the stored rows bit for bit."),
]


@asset(
    partitions_def=BAR_PARTITIONS,
    deps=[bars],
    check_specs=CHECKS,
    group_name="features",
    kinds={"postgres", "numba"},
    description=__doc__,
    code_version=CATALOGUE.version,
)
def features(context: AssetExecutionContext, database: DatabaseResource, landing: LandingResource) -> MaterializeResult:
    db = database.database()
    partitions = partitions_of(context)
    log = PartitionLog(context, len(partitions))
    timeframes = checked(lambda: landing.timeframes)
    done = {}  # (symbol, day) → [(timeframe, result, rows)], the data's timeframe first
    for timeframe, resampled in timeframes:
        bars_of = read_once(db, landing, partitions, history=CATALOGUE.max_lookback - 1, timeframe=timeframe,
                            resampled=resampled)
        for symbol, day in partitions:
            done.setdefault((symbol, day), []).append(
                (timeframe, *_features_day(log, db, landing, timeframe, symbol, day, bars_of[symbol])))
    result = combined([(f"{day}|{symbol}", per_timeframe([(timeframe, day_result) for timeframe, day_result, _ in each]))
                       for (symbol, day), each in done.items()],
                      additive=("rows", *(f"rows ({timeframe})" for timeframe, _ in timeframes[1:])))
    rows = [each[0][2] for each in done.values() if len(each[0][2])]
    summary = {"summary": MetadataValue.md(_summary_table(pd.concat(rows)))} if rows else {}
    return MaterializeResult(metadata={**result.metadata, "features": len(CATALOGUE.names),
                                       "feature_set": CATALOGUE.version,
                                       "timeframes": ", ".join(timeframe for timeframe, _ in timeframes), **summary},
                             check_results=result.check_results)


def _features_day(log: PartitionLog, db, landing: LandingResource, timeframe: str, symbol: str, day,
                  session_bars: SessionBars) -> tuple[MaterializeResult, pd.DataFrame]:
    """One partition's feature rows of one timeframe written and checked: its result and the rows
    (none without a session)."""
    calendar = session_bars.calendar
    first, end = calendar.partition_bounds(day)
    window, in_day = session_bars.of(day)
    if not in_day.any():
        if calendar.is_trading_day(day):
            raise Failure(description=f"no {timeframe} bars to compute features from for {symbol} on {day}: "
                                      + no_session_bars(db, symbol, landing.timeframe, day, calendar))
        no_rows = pd.DataFrame(columns=CATALOGUE.names, index=pd.DatetimeIndex([], tz="UTC", name="ts"),
                               dtype="float64")
        write_features(db, symbol, timeframe, no_rows, CATALOGUE, first, end)
        log.info(f"{symbol} {day}: no session on the {calendar.name} calendar (weekend or holiday)")
        return MaterializeResult(
            metadata={"rows": 0, "session": f"none ({day:%A}: weekend or holiday on the {calendar.name} calendar)"},
            check_results=[AssetCheckResult(check_name=name, passed=True, severity=AssetCheckSeverity.ERROR,
                                            metadata={"rows_checked": 0}) for name in ("no_nan_after_warmup",
                                                                                       "causality_spot_check")]
        ), no_rows
    if len(window) < CATALOGUE.max_lookback:  # the first days of the data: every row is still warming up
        log.info(f"{len(window)} {timeframe} bars of {symbol} stored up to {day}, features need {CATALOGUE.max_lookback} "
                 "(the longest lookback): the day's rows are warm-up rows (NaN)")
        computed = pd.DataFrame(np.nan, index=pd.DatetimeIndex(window["ts"], name="ts"), columns=CATALOGUE.names)
    else:
        computed = compute_features(window, calendar=calendar)
    rows = computed[in_day]
    written = write_features(db, symbol, timeframe, rows, CATALOGUE, first, end)

    lookbacks = np.array([s.lookback for s in CATALOGUE.specs])
    position = np.arange(len(window))[in_day][:, None]
    # enough stored bars behind this row for this feature (none while fewer than the longest lookback exist)
    complete = (position >= lookbacks[None, :] - 1) & (len(window) >= CATALOGUE.max_lookback)
    values = rows.to_numpy()
    nan_after_warmup = int((~np.isfinite(values) & complete).sum())
    worst = {}
    if nan_after_warmup:
        per_feature = (~np.isfinite(values) & complete).sum(axis=0)
        worst = {CATALOGUE.names[i]: int(per_feature[i]) for i in np.argsort(-per_feature)[:5] if per_feature[i]}

    mismatches, sampled = _spot_check(window, computed, in_day, symbol, day, calendar)
    log.info(f"{symbol} {day} {timeframe}: {written} feature rows ({len(CATALOGUE.names)} features, "
             f"set {CATALOGUE.version}); causality spot check {sampled - mismatches}/{sampled} identical")
    return MaterializeResult(
        metadata={"rows": written, "history_bars": int((~in_day).sum())},
        check_results=[
            AssetCheckResult(check_name="no_nan_after_warmup", passed=nan_after_warmup == 0,
                             severity=AssetCheckSeverity.ERROR,
                             metadata={"nan_values": nan_after_warmup, "worst_features": MetadataValue.json(worst)}),
            AssetCheckResult(check_name="causality_spot_check", passed=mismatches == 0,
                             severity=AssetCheckSeverity.ERROR,
                             metadata={"rows_checked": sampled, "rows_differing": mismatches}),
        ],
    ), rows


def _spot_check(window: pd.DataFrame, computed: pd.DataFrame, in_day: np.ndarray, symbol: str, day, calendar
                ) -> tuple[int, int]:
    """Recompute sampled rows from their last ``max_lookback`` bars only; count differences."""
    lookback = CATALOGUE.max_lookback
    candidates = np.flatnonzero(in_day)
    candidates = candidates[candidates >= lookback - 1]
    if len(candidates) == 0:
        return 0, 0
    seed = int.from_bytes(hashlib.sha256(f"{symbol}|{day}".encode()).digest()[:4], "little")
    sample = np.random.default_rng(seed).choice(candidates, size=min(SPOT_CHECKS, len(candidates)), replace=False)
    mismatches = 0
    for t in sample:
        alone = compute_features(window.iloc[t - lookback + 1: t + 1], calendar=calendar).iloc[-1].to_numpy()
        batch = computed.iloc[t].to_numpy()
        if not np.array_equal(alone, batch, equal_nan=True):
            mismatches += 1
    return mismatches, len(sample)


def _summary_table(rows: pd.DataFrame) -> str:
    stats = rows.describe().T[["mean", "std", "min", "max"]]
    stats["nan"] = rows.isna().sum()
    lines = ["| feature | mean | std | min | max | NaN |", "|---|---|---|---|---|---|"]
    for name, row in stats.iterrows():
        lines.append(f"| {name} | {row['mean']:.4g} | {row['std']:.4g} | {row['min']:.4g} | {row['max']:.4g} | {int(row['nan'])} |")
    return "\n".join(lines)
