"""Time-ordered splits purged by label end times, with an embargo.

A label at bar t is only known at t1 (its barrier time). A training sample whose
[t, t1] interval overlaps the evaluation period leaks the evaluation outcome into
training, so it is purged; samples just after the evaluation period are embargoed,
because features computed from overlapping windows are serially correlated with it
(López de Prado, Advances in Financial Machine Learning, ch. 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    """Positions of training samples, ascending."""
    test: np.ndarray
    """Positions of evaluation samples, ascending."""
    purged: int
    embargoed: int


def purge(train: np.ndarray, ts, t1, test_start, test_end, embargo: pd.Timedelta) -> tuple[np.ndarray, int, int]:
    """Drop training positions whose label interval [ts, t1] overlaps [test_start, test_end],
    and those starting within ``embargo`` after test_end; return (kept, purged, embargoed)."""
    start, end = _instant(test_start), _instant(test_end)
    embargo_end = end + np.timedelta64(embargo.value, "ns")
    starts, ends = _naive(np.asarray(ts)[train]), _naive(np.asarray(t1)[train])
    overlaps = (starts <= end) & (ends >= start)
    embargoed = (starts > end) & (starts <= embargo_end)
    return train[~(overlaps | embargoed)], int(overlaps.sum()), int(embargoed.sum())


def holdout_split(ts, t1, valid_fraction: float = 0.2, embargo: pd.Timedelta = pd.Timedelta(0)) -> Split:
    """Train on the earlier part, validate on the last ``valid_fraction`` of samples by time."""
    n = len(ts)
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    order = np.argsort(_naive(np.asarray(ts)), kind="stable")
    cut = int(round(n * (1 - valid_fraction)))
    test = np.sort(order[cut:])
    train = np.sort(order[:cut])
    ts_arr = np.asarray(ts)
    train, purged, embargoed = purge(train, ts, t1, ts_arr[test].min(), ts_arr[test].max(), embargo)
    return Split(train, test, purged, embargoed)


def walk_forward_splits(ts, t1, folds: int = 4, min_train_fraction: float = 0.4, expanding: bool = True,
                        embargo: pd.Timedelta = pd.Timedelta(0)) -> list[Split]:
    """Consecutive test blocks after an initial training span; training is everything
    before each block (expanding) or a window of the initial span's length (rolling)."""
    n = len(ts)
    order = np.argsort(_naive(np.asarray(ts)), kind="stable")
    first_test = int(n * min_train_fraction)
    bounds = np.linspace(first_test, n, folds + 1).astype(int)
    ts_arr = np.asarray(ts)
    splits = []
    for k in range(folds):
        test = np.sort(order[bounds[k]:bounds[k + 1]])
        lo = 0 if expanding else max(0, bounds[k] - first_test)
        train = np.sort(order[lo:bounds[k]])
        train, purged, embargoed = purge(train, ts, t1, ts_arr[test].min(), ts_arr[test].max(), embargo)
        splits.append(Split(train, test, purged, embargoed))
    return splits


def _naive(values: np.ndarray) -> np.ndarray:
    index = pd.DatetimeIndex(values)
    return (index.tz_convert(None) if index.tz is not None else index).values


def _instant(value) -> np.datetime64:
    stamp = pd.Timestamp(value)
    return (stamp.tz_convert(None) if stamp.tzinfo else stamp).to_datetime64()
