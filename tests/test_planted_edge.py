"""The synthetic market's planted edge, measured in the features' and labels' own terms."""

from __future__ import annotations

import numpy as np
import pytest

from smc_core.calendar import CME_EQUITY
from smc_core.features import compute_features
from smc_core.labels import Horizon, triple_barrier
from smc_core.synthetic import SyntheticConfig, generate_bars

RETEST = [1, 2]  # fvg_retest_type wick or body


def conditional_frequencies(edge: str) -> dict[str, tuple[float, float]]:
    bars = generate_bars(SyntheticConfig(days=30, seed=21, edge=edge, edge_strength=0.7))
    frame = compute_features(bars)
    labelled = bars.assign(atr=frame["atr"].to_numpy(),
                           session=CME_EQUITY.trading_day_of(bars["ts"]).astype("int64"))
    label = triple_barrier(labelled, Horizon(bars=15, up_atr=1.5, down_atr=1.5),
                           last_session_complete=True)["label"].to_numpy()
    retest = np.isin(frame["fvg_retest_type"].to_numpy(), RETEST)
    setups = {
        "bull": (frame["has_fvg_bull"] == 1) & retest & (frame["ret_20"] > 0) & (frame["fvg_bull_size_atr"] > 0),
        "bear": (frame["has_fvg_bear"] == 1) & retest & (frame["ret_20"] < 0) & (frame["fvg_bear_size_atr"] > 0),
    }
    out = {}
    for side, mask in setups.items():
        known = label[mask.to_numpy() & (label >= 0)]
        assert len(known) > 500
        towards, against = (0, 1) if side == "bull" else (1, 0)
        out[side] = (float((known == towards).mean()), float((known == against).mean()))
    return out


@pytest.mark.parametrize("edge, present", [("smc", True), ("none", False)])
def test_setup_outcomes_lean_only_when_the_edge_is_planted(edge, present):
    for side, (towards, against) in conditional_frequencies(edge).items():
        if present:
            assert towards - against > 0.10, (side, towards, against)
        else:
            assert abs(towards - against) < 0.05, (side, towards, against)
