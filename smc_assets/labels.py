"""The ``labels`` asset: triple-barrier outcomes per symbol × trading day, one set per horizon and
timeframe (the data's and each resampled one; a horizon counts bars of its timeframe).

Labels are the one place that reads the future. Each keeps ``t1``, the close time of the
bar at which its outcome became known, so training can purge and embargo around it.
Positions are flat at the session close, so a partition's labels need only its own
session; for a session still in progress the undecided tail is stored as unknown (-1)
and resolved when the partition is materialized again after the close.
"""

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from smc_assets.features import features
from smc_assets.partitions import BAR_PARTITIONS
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.features import CATALOGUE
from smc_assets.common import PartitionLog, checked, combined, partitions_of, per_timeframe, read_once
from smc_core.labels import (LABELS, SESSION_END_WARNING, Horizon, horizon_fit, label_counts, session_end_share,
                             triple_barrier)
from smc_core.store import SessionBars, no_session_bars, read_features, write_labels
from smc_core.timeframe import is_daily, parse_timeframe


class HorizonConfig(Config):
    bars: int = Field(default=15, description="Time barrier H, in bars (15: a 1-minute setup resolves within a quarter hour).")
    up_atr: float = Field(default=1.5, description="Long profit / short loss barrier, in ATRs of the entry bar.")
    down_atr: float = Field(default=1.5, description="Long loss / short profit barrier, in ATRs of the entry bar.")
    min_move_atr: float = Field(default=0.0, description="Minimum move at the time barrier to count as a direction.")

    def horizon(self) -> Horizon:
        return Horizon(self.bars, self.up_atr, self.down_atr, self.min_move_atr)


class LabelsConfig(Config):
    horizons: list[HorizonConfig] = Field(default_factory=lambda: [HorizonConfig()],
                                          description="Every (H, k) labelling to compute; each is stored separately.")


CHECKS = [
    AssetCheckSpec("labels_resolved", asset="labels",
                   description="Every bar of a finished session has a known label (warm-up bars excepted)."),
    AssetCheckSpec("horizon_fits_session", asset="labels",
                   description=f"At most {SESSION_END_WARNING:.0%} of the known labels are forced skips at the "
                               "session close (more means the horizon is too long for the session at this timeframe)."),
]


@asset(
    partitions_def=BAR_PARTITIONS,
    deps=[features],
    check_specs=CHECKS,
    group_name="features",
    kinds={"postgres"},
    description=__doc__,
)
def labels(context: AssetExecutionContext, config: LabelsConfig, database: DatabaseResource,
           landing: LandingResource) -> MaterializeResult:
    db = database.database()
    partitions = partitions_of(context)
    log = PartitionLog(context, len(partitions))
    longest = max(h.bars for h in config.horizons)
    timeframes = checked(lambda: landing.timeframes)
    done = {}  # (symbol, day) → [(timeframe, result)], the data's timeframe first
    for timeframe, resampled in timeframes:
        # a daily position is held from session to session, so its outcome needs the bars after the day
        bars_of = read_once(db, landing, partitions, future=longest if is_daily(parse_timeframe(timeframe)) else 0,
                            timeframe=timeframe, resampled=resampled)
        for symbol, day in partitions:
            done.setdefault((symbol, day), []).append(
                (timeframe, _labels_day(log, config, db, landing, timeframe, symbol, day, bars_of[symbol])))
    return combined([(f"{day}|{symbol}", per_timeframe(each)) for (symbol, day), each in done.items()],
                    additive=("bars", *(f"bars ({timeframe})" for timeframe, _ in timeframes[1:])))


def _labels_day(log: PartitionLog, config: LabelsConfig, db, landing: LandingResource, timeframe: str, symbol: str,
                day, session_bars: SessionBars) -> MaterializeResult:
    calendar = session_bars.calendar
    width = parse_timeframe(timeframe)
    first, end = calendar.partition_bounds(day)
    daily = is_daily(width)
    longest = max(h.bars for h in config.horizons)
    frame, mine = session_bars.of(day)
    if not mine.any():
        if calendar.is_trading_day(day):
            raise Failure(description=f"no {timeframe} bars to label for {symbol} on {day}: "
                                      + no_session_bars(db, symbol, landing.timeframe, day, calendar))
        for horizon_config in config.horizons:
            write_labels(db, symbol, timeframe, horizon_config.horizon().name, frame.iloc[:0][["ts"]].assign(
                label=[], t1=[], ret=[], barrier=[]), first, end)
        log.info(f"{symbol} {day}: no session on the {calendar.name} calendar (weekend or holiday)")
        return MaterializeResult(
            metadata={"bars": 0, "session": f"none ({day:%A}: weekend or holiday on the {calendar.name} calendar)"},
            check_results=[AssetCheckResult(check_name=name, passed=True, severity=AssetCheckSeverity.WARN)
                           for name in ("labels_resolved", "horizon_fits_session")])
    atr = read_features(db, symbol, timeframe, first, end, CATALOGUE)["atr"]
    own = frame[mine]
    if len(atr) != len(own) or not atr.index.equals(pd.DatetimeIndex(own["ts"])):
        raise Failure(description=f"{len(atr)} {timeframe} feature rows for {len(own)} {timeframe} bars of {symbol} "
                                  f"on {day}: materialize the features partition first")
    frame = frame.assign(atr=atr.reindex(pd.DatetimeIndex(frame["ts"])).to_numpy(),
                         session=calendar.position_sessions(frame["ts"], width))
    if daily:  # over once the bars the longest horizon needs are stored
        session_over = int((~mine[int(np.flatnonzero(mine)[-1]) + 1:]).sum()) >= longest
    else:
        session_over = bool(own["ts"].iloc[-1] == end) or pd.Timestamp.now(tz="UTC") > end
    bars_per_session = calendar.session_length() / width

    balance, unresolved, shares, warnings = {}, 0, {}, []
    for horizon_config in config.horizons:
        horizon = horizon_config.horizon()
        result = triple_barrier(frame, horizon, last_session_complete=session_over and not daily)[mine]
        write_labels(db, symbol, timeframe, horizon.name,
                     pd.concat([own[["ts"]], result], axis=1), first, end)
        counts = label_counts(result)
        balance[horizon.name] = counts
        warmup = int(np.isnan(frame["atr"].to_numpy()[mine]).sum())
        unresolved += counts["unknown"] - warmup if session_over else 0
        shares[horizon.name] = round(session_end_share(result), 4)
        warning = horizon_fit(horizon, bars_per_session, shares[horizon.name])
        if warning:
            warnings.append(warning)
            log.warning(f"{symbol} {day} {timeframe}: {warning}")
        log.info(f"{symbol} {day} {timeframe} {horizon.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    return MaterializeResult(
        metadata={
            "bars": len(own),
            "session_over": session_over,
            "horizons": MetadataValue.json([h.horizon().name for h in config.horizons]),
            "label_balance": MetadataValue.md(_balance_table(balance)),
            "label_counts": MetadataValue.json(balance),
            "session_end_share": MetadataValue.json(shares),
        },
        check_results=[
            AssetCheckResult(check_name="labels_resolved", passed=unresolved == 0, severity=AssetCheckSeverity.WARN,
                             metadata={"unresolved_labels": unresolved, "session_over": session_over}),
            AssetCheckResult(check_name="horizon_fits_session", passed=not warnings, severity=AssetCheckSeverity.WARN,
                             description="; ".join(warnings) or None,
                             metadata={"session_end_share": MetadataValue.json(shares),
                                       "bars_per_session": round(bars_per_session, 2),
                                       "max_share": SESSION_END_WARNING}),
        ],
    )


def _balance_table(balance: dict[str, dict[str, int]]) -> str:
    lines = ["| horizon | " + " | ".join(LABELS) + " | unknown |", "|---" * (len(LABELS) + 2) + "|"]
    for name, counts in balance.items():
        total = sum(counts.values()) or 1
        cells = [f"{counts[label]} ({counts[label] / total:.0%})" for label in (*LABELS, "unknown")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
