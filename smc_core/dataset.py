"""Training windows from stored features and labels.

A sample is the window of the last ``sequence_length`` feature rows ending at bar t,
with the label of bar t. Windows never cross symbols, never include an incomplete
feature row, and carry the label's end time ``t1`` so splits can purge and embargo.
Pretraining needs no labels: then every complete window is a sample (y = -1, t1 = ts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from smc_core.db import Database
from smc_core.errors import SmcError
from smc_core.features.catalogue import FeatureCatalogue
from smc_core.store import read_features, read_labels

UNLABELLED = -1


@dataclass
class TrainingData:
    rows: np.ndarray
    """Feature rows [n_rows, n_features], time-ordered within each symbol."""
    row_ts: np.ndarray
    row_symbol: np.ndarray
    """Index into ``symbols`` of each row: windows and next-bar targets never cross it."""
    ends: np.ndarray
    """Row index of each sample's last bar."""
    y: np.ndarray
    t1: np.ndarray
    symbols: list[str]
    sequence_length: int

    @property
    def ts(self) -> np.ndarray:
        """Close time of each sample's last bar (its decision time)."""
        return self.row_ts[self.ends]

    def __len__(self) -> int:
        return len(self.ends)

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        ts = pd.DatetimeIndex(self.ts)
        return ts.min(), ts.max()


def build_samples(features: pd.DataFrame, labels: pd.DataFrame | None, sequence_length: int,
                  offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ends, y, t1) for one symbol: bars with a complete window and, given labels, a known label."""
    values = features.to_numpy(dtype="float64")
    finite = np.isfinite(values).all(axis=1)
    # a window is complete when its last `sequence_length` rows are all finite
    incomplete = np.convolve(~finite, np.ones(sequence_length, dtype=int), mode="full")[: len(finite)]
    complete = (incomplete == 0) & (np.arange(len(finite)) >= sequence_length - 1)
    if labels is None:
        ends = np.flatnonzero(complete)
        return ends + offset, np.full(len(ends), UNLABELLED, dtype="int64"), features.index.to_numpy()[ends]
    joined = labels.set_index("ts").reindex(features.index)
    known = joined["label"].fillna(-1).to_numpy().astype(int) >= 0
    ends = np.flatnonzero(complete & known)
    return ends + offset, joined["label"].to_numpy()[ends].astype("int64"), joined["t1"].to_numpy()[ends]


def assemble(frames: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]], sequence_length: int) -> TrainingData:
    """One TrainingData from per-symbol (features, labels or None) frames, symbols kept apart."""
    rows, row_ts, row_symbol, ends, ys, t1s, symbols = [], [], [], [], [], [], []
    offset = 0
    for symbol, (features, labels) in frames.items():
        if features.empty:
            continue
        symbol_ends, y, t1 = build_samples(features, labels, sequence_length, offset)
        rows.append(features.to_numpy(dtype="float64"))
        row_ts.append(features.index.to_numpy())
        row_symbol.append(np.full(len(features), len(symbols), dtype="int64"))
        ends.append(symbol_ends)
        ys.append(y)
        t1s.append(t1)
        symbols.append(symbol)
        offset += len(features)
    if not rows:
        raise SmcError(f"no feature rows for {', '.join(frames) or 'any symbol'}")
    return TrainingData(np.concatenate(rows), np.concatenate(row_ts), np.concatenate(row_symbol),
                        np.concatenate(ends), np.concatenate(ys), np.concatenate(t1s), symbols, sequence_length)


def load_training_data(db: Database, symbols: list[str], timeframe: str, start: pd.Timestamp, end: pd.Timestamp,
                       catalogue: FeatureCatalogue, horizon: str | None, sequence_length: int) -> TrainingData:
    """All samples of ``symbols`` with decision time in (start, end]; ``horizon=None`` for unlabelled windows."""
    frames = {}
    for symbol in symbols:
        features = read_features(db, symbol, timeframe, start, end, catalogue)
        labels = read_labels(db, symbol, timeframe, horizon, start, end) if horizon is not None else None
        frames[symbol] = (features, labels)
    if all(features.empty for features, _ in frames.values()):
        raise SmcError(f"no feature rows for {', '.join(symbols) or 'any symbol'} {timeframe} in ({start}, {end}] "
                       f"(feature set {catalogue.version}): materialize the features partitions first")
    data = assemble(frames, sequence_length)
    if horizon is not None and len(data) == 0:
        raise SmcError(f"no labelled windows for {', '.join(symbols)} {timeframe} horizon {horizon} in "
                       f"({start}, {end}]: materialize the labels partitions with this horizon first")
    return data


def from_bars(bars: dict[str, pd.DataFrame], horizon, sequence_length: int,
              calendar=None) -> tuple[TrainingData, dict[str, pd.DataFrame]]:
    """Training data computed in memory from each symbol's bars (no database), and the bars
    with the ``atr`` and ``session`` columns the backtest needs: for tests, benchmarks and
    research on generated or exported data."""
    from smc_core.calendar import CME_EQUITY
    from smc_core.features import compute_features
    from smc_core.labels import triple_barrier

    calendar = calendar or CME_EQUITY
    frames, traded = {}, {}
    for symbol, symbol_bars in bars.items():
        features = compute_features(symbol_bars)
        features.index = pd.DatetimeIndex(symbol_bars["ts"], name="ts")
        traded[symbol] = symbol_bars.assign(
            atr=features["atr"].to_numpy(),
            session=calendar.trading_day_of(symbol_bars["ts"]).astype("int64")).reset_index(drop=True)
        labels = pd.concat([symbol_bars[["ts"]].reset_index(drop=True),
                            triple_barrier(traded[symbol], horizon, last_session_complete=True)], axis=1)
        frames[symbol] = (features, labels)
    return assemble(frames, sequence_length), traded
