"""Point-in-time features: one function from a window of bars to feature rows.

``compute_features`` is what the ``features`` asset runs over a partition (plus the tail
of the previous one) and what the service runs over the bars of one request. Every
column at bar t depends only on its declared lookback of bars ending at t (see the
catalogue), so both callers get identical values for the same bars.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from smc_core.calendar import CME_EQUITY, DAY_NS, SECOND_NS, SessionCalendar
from smc_core.errors import SmcError
from smc_core.features.catalogue import CATALOGUE, FeatureCatalogue, FeatureParams, FeatureSpec
from smc_core.features.structure import smc_features
from smc_core.features.technical import estimate_delta, technical_features, true_range, window_mean

__all__ = ["CATALOGUE", "FeatureCatalogue", "FeatureParams", "FeatureSpec", "FeatureInputError",
           "compute_features", "feature_matrix", "time_features"]

_OHLCV = ("open", "high", "low", "close", "volume")


class FeatureInputError(SmcError):
    """Bars that features cannot be computed from; the message names the offending row."""


def compute_features(bars: pd.DataFrame | Mapping[str, object], *, catalogue: FeatureCatalogue = CATALOGUE,
                     calendar: SessionCalendar = CME_EQUITY) -> pd.DataFrame:
    """Feature rows for every bar of ``bars`` (columns ts, open, high, low, close, volume,
    optional delta), indexed by ``ts``, columns in catalogue order, float64.

    Rows before a feature's lookback is complete hold NaN. Raises FeatureInputError for
    too few bars, non-finite values or timestamps that are not strictly increasing.
    """
    return pd.DataFrame(feature_matrix(bars, catalogue=catalogue, calendar=calendar),
                        index=pd.DatetimeIndex(bars["ts"], name="ts"), columns=list(catalogue.names))


def feature_matrix(bars: pd.DataFrame | Mapping[str, object], *, catalogue: FeatureCatalogue = CATALOGUE,
                   calendar: SessionCalendar = CME_EQUITY) -> np.ndarray:
    """``compute_features`` as a bare [bars × features] float64 array: the service's path,
    which takes plain column arrays and skips building DataFrames on every request."""
    missing = [c for c in ("ts", *_OHLCV) if c not in bars]
    if missing:
        raise FeatureInputError(f"bars lack column(s) {', '.join(missing)}")
    stamps = bars["ts"] if isinstance(bars["ts"], pd.DatetimeIndex) else pd.DatetimeIndex(bars["ts"])  # no copy
    o, h, l, c, v = (np.asarray(bars[k], dtype="float64") for k in _OHLCV)
    _validate(stamps, np.column_stack((o, h, l, c, v)), catalogue)
    params = catalogue.params
    delta = np.asarray(bars["delta"], dtype="float64") if "delta" in bars else np.full(len(stamps), np.nan)
    missing_delta = np.isnan(delta)
    delta = np.where(missing_delta, estimate_delta(o, h, l, c, v), delta)

    atr = window_mean(true_range(h, l, c), params.atr_window)
    columns: dict[str, np.ndarray] = {"atr": atr, "delta": delta, "delta_is_estimate": missing_delta.astype("float64")}
    columns.update(smc_features(o, h, l, c, v, atr, window=params.smc_window, long_swing=params.long_swing,
                                short_swing=params.short_swing, fvg_min_atr=params.fvg_min_atr))
    columns.update(technical_features(o, h, l, c, v, delta, atr))
    columns.update(time_features(stamps, calendar))
    return np.column_stack([np.asarray(columns[name], dtype="float64") for name in catalogue.names])


def time_features(ts: pd.DatetimeIndex, calendar: SessionCalendar) -> dict[str, np.ndarray]:
    """Calendar encodings of each bar close; they depend on that bar's timestamp only."""
    wall = calendar.wall_clock_ns(ts)
    seconds_of_day = (wall - wall // DAY_NS * DAY_NS) // SECOND_NS
    minute_of_day = (seconds_of_day // 60) + (seconds_of_day % 60) / 60.0
    angle = 2 * np.pi * minute_of_day / 1440.0
    schedule, owner, in_session = calendar.locate(ts)
    days = schedule.days[owner]
    weekday = ((days.astype("int64") - 4) % 7).astype("float64")  # 1970-01-01 was a Thursday; Monday = 0
    day_angle = 2 * np.pi * weekday / 5.0
    opens, closes = schedule.opens[owner].astype("float64"), schedule.closes[owner].astype("float64")
    progress = ((ts if ts.unit == "ns" else ts.as_unit("ns")).asi8.astype("float64") - opens) / (closes - opens)
    return {
        "tod_sin": np.sin(angle), "tod_cos": np.cos(angle),
        "dow_sin": np.sin(day_angle), "dow_cos": np.cos(day_angle),
        "is_rth": calendar.is_rth_at(wall, in_session).astype("float64"),
        "session_progress": progress,
    }


def _validate(stamps: pd.DatetimeIndex, values: np.ndarray, catalogue: FeatureCatalogue) -> None:
    if len(stamps) < catalogue.max_lookback:
        raise FeatureInputError(
            f"{len(stamps)} bars are too few: features need at least {catalogue.max_lookback} "
            f"(the longest lookback) to produce one complete row")
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad_rows):
        i = int(bad_rows[0])
        column = int(np.flatnonzero(~np.isfinite(values[i]))[0])
        raise FeatureInputError(f"bar {i} ({stamps[i]}) has a non-finite {_OHLCV[column]}: {values[i][column]}")
    if stamps.tz is None:
        raise FeatureInputError("bar timestamps must be timezone-aware (UTC close times)")
    steps = np.diff(stamps.asi8)
    not_increasing = np.flatnonzero(steps <= 0)
    if len(not_increasing):
        i = int(not_increasing[0]) + 1
        raise FeatureInputError(
            f"bar timestamps must be strictly increasing: bar {i} ({stamps[i]}) does not follow bar {i - 1} ({stamps[i - 1]})")
