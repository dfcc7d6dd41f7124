"""The ``labels`` asset: triple-barrier outcomes per symbol × trading day, one set per horizon.

Labels are the one place that reads the future. Each keeps ``t1``, the close time of the
bar at which its outcome became known, so training can purge and embargo around it.
Positions are flat at the session close, so a partition's labels need only its own
session; for a session still in progress the undecided tail is stored as unknown (-1)
and resolved when the partition is materialized again after the close.
"""

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
from smc_assets.partitions import BAR_PARTITIONS, split_bar_partition_key
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.features import CATALOGUE
from smc_core.labels import LABELS, Horizon, label_counts, triple_barrier
from smc_core.store import load_bars, read_features, write_labels


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
    symbol, day = split_bar_partition_key(context.partition_key)
    db = database.database()
    calendar = landing.calendar()
    start, end = calendar.session_bounds(day)
    bars = load_bars(db, symbol, landing.timeframe, start, end)
    if bars.empty:
        raise Failure(description=f"no bars stored for {symbol} on {day}: materialize the bars partition first")
    atr = read_features(db, symbol, landing.timeframe, start, end, CATALOGUE)["atr"]
    if len(atr) != len(bars):
        raise Failure(description=f"{len(atr)} feature rows for {len(bars)} bars of {symbol} on {day}: "
                                  "materialize the features partition first")
    frame = bars.assign(atr=atr.to_numpy(), session=day.toordinal())
    session_over = bool(bars["ts"].iloc[-1] == end) or pd.Timestamp.now(tz="UTC") > end

    balance, unresolved = {}, 0
    for horizon_config in config.horizons:
        horizon = horizon_config.horizon()
        result = triple_barrier(frame, horizon, last_session_complete=session_over)
        write_labels(db, symbol, landing.timeframe, horizon.name, pd.concat([bars[["ts"]], result], axis=1), start, end)
        counts = label_counts(result)
        balance[horizon.name] = counts
        warmup = int(frame["atr"].isna().sum())
        unresolved += counts["unknown"] - warmup if session_over else 0
        context.log.info(f"{symbol} {day} {horizon.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    return MaterializeResult(
        metadata={
            "bars": len(bars),
            "session_over": session_over,
            "horizons": MetadataValue.json([h.horizon().name for h in config.horizons]),
            "label_balance": MetadataValue.md(_balance_table(balance)),
            "label_counts": MetadataValue.json(balance),
        },
        check_results=[
            AssetCheckResult(check_name="labels_resolved", passed=unresolved == 0, severity=AssetCheckSeverity.WARN,
                             metadata={"unresolved_labels": unresolved, "session_over": session_over}),
        ],
    )


def _balance_table(balance: dict[str, dict[str, int]]) -> str:
    lines = ["| horizon | " + " | ".join(LABELS) + " | unknown |", "|---" * (len(LABELS) + 2) + "|"]
    for name, counts in balance.items():
        total = sum(counts.values()) or 1
        cells = [f"{counts[label]} ({counts[label] / total:.0%})" for label in (*LABELS, "unknown")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
