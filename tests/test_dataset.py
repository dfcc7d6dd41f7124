"""Training windows: complete, labelled, never across symbols."""

from __future__ import annotations

import numpy as np
import pandas as pd

from smc_core.dataset import build_samples


def test_windows_need_complete_rows_and_known_labels():
    ts = pd.date_range("2024-03-05 14:31", periods=12, freq="min", tz="UTC")
    values = np.ones((12, 3))
    values[:2, 0] = np.nan      # warm-up
    values[7, 1] = np.nan       # a hole
    features = pd.DataFrame(values, index=pd.DatetimeIndex(ts, name="ts"))
    labels = pd.DataFrame({"ts": ts, "label": [0, 1, 2, 0, 1, 2, 0, 1, 2, -1, 0, 1],
                           "t1": ts + pd.Timedelta(minutes=3), "ret": 0.0, "barrier": "up"})
    ends, y, t1 = build_samples(features, labels, sequence_length=3, offset=100)
    # rows 2.. are finite except 7; windows of 3 need rows e-2..e finite: ends 4,5,6 and 10,11; 9 is unknown
    assert list(ends) == [104, 105, 106, 110, 111]
    assert list(y) == [1, 2, 0, 0, 1]
    assert list(pd.DatetimeIndex(t1)) == list(ts[[4, 5, 6, 10, 11]] + pd.Timedelta(minutes=3))
