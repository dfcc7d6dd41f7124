"""The gates' verdicts at their default thresholds on synthetic markets: a planted SMC edge is
promoted, a market without one is refused (walk-forward, retrained per fold, with costs).

The DSR counts every configuration tried (LoRA and LightGBM at five entry thresholds) and
needs a long out-of-sample record to clear 0.95 at that count, so the edge market is two
symbols of DAYS trading days, of which the last 60 % are traded out of sample.
"""

from __future__ import annotations

import numpy as np
import pytest

from smc_core.dataset import from_bars
from smc_core.evaluation.gates import GateConfig
from smc_core.evaluation.walk_forward import WalkForwardConfig, evaluate_challenger
from smc_core.features import CATALOGUE
from smc_core.labels import Horizon
from smc_core.model import TrainConfig
from smc_core.model.pipeline import BaseConfig, RunConfig
from smc_core.promotion import judge
from smc_core.synthetic import Instrument, SyntheticConfig, generate_bars

DAYS = 42
GATE_NAMES = ("deflated_sharpe", "pbo", "spa", "versus_champion", "calibration", "latency")
BASE = BaseConfig(train=TrainConfig(epochs=3, patience=2))
RUN = RunConfig(train_stride=3, train=TrainConfig(epochs=12, patience=2))
WALK = WalkForwardConfig(folds=2, min_train_fraction=0.4)


def evaluate(edge: str, symbols: dict[str, int], days: int):
    bars = {symbol: generate_bars(SyntheticConfig(days=days, edge=edge, edge_strength=1.0, seed=seed,
                                                  instrument=Instrument(symbol=symbol)))
            for symbol, seed in symbols.items()}
    data, traded = from_bars(bars, Horizon(), 20)
    return evaluate_challenger(data, traded, CATALOGUE, BASE, RUN, WALK, GateConfig(), ece=0.02, latency_ms=2.0,
                               champion=None, trial_history=np.array([]))


def _table(evaluation) -> str:
    return "\n".join(f"{g.name}: {'pass' if g.passed else 'FAIL'} ({g.reason})" for g in evaluation.gates)


@pytest.mark.slow
def test_a_planted_edge_passes_every_gate():
    evaluation = evaluate("smc", {"ES": 3, "NQ": 4}, DAYS)
    assert evaluation.passed, _table(evaluation)
    assert judge([g.as_dict() for g in evaluation.gates], GATE_NAMES).passed  # what champion acts on
    metrics = evaluation.challenger.metrics()
    assert metrics["sharpe"] > 0 and metrics["trades"] >= 30 and metrics["net_pnl"] > 0
    assert set(evaluation.candidates) == set(WALK.candidate_thresholds)
    assert len(evaluation.trial_sharpes) == 2 * len(WALK.candidate_thresholds)  # LoRA and LightGBM
    best = max(evaluation.candidates, key=lambda t: np.nan_to_num(evaluation.candidates[t].metrics()["sharpe"],
                                                                  nan=-np.inf))
    assert evaluation.selected_threshold == best


def test_a_market_without_edge_is_refused():
    evaluation = evaluate("none", {"ES": 3}, 12)
    assert not evaluation.passed
    failed = {g.name for g in evaluation.gates if not g.passed}
    assert {"deflated_sharpe", "spa"} <= failed, _table(evaluation)
    # champion's verdict on the same results: refused, naming each failed gate with its own reason
    verdict = judge([g.as_dict() for g in evaluation.gates], GATE_NAMES)
    assert not verdict.passed and set(verdict.failed) == failed
    assert all(verdict.failed[g.name] == g.reason for g in evaluation.gates if not g.passed)
