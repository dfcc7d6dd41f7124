"""The gates' verdicts at their default thresholds on synthetic markets: a planted SMC edge is
promoted, a market without one is refused (walk-forward, retrained per fold, with costs).

The DSR counts every configuration tried (LoRA and LightGBM at five entry thresholds) and
needs a long out-of-sample record to clear 0.95 at that count, so the edge market is two
symbols of DAYS trading days, of which the last 60 % are traded out of sample.

The market without edge is refused on its statistics, every one of them computed: it trades
well over the 30 trades a statistic needs, and a champion (a small model trained on an
earlier stretch of the same kind of market, loaded from its package as ``champion`` loads
one) is traded on the same bars, so ``versus_champion`` has its figures too. The same run
shows where calibration is measured: on windows neither early stopping nor the temperature
saw.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from smc_core.dataset import from_bars
from smc_core.evaluation.gates import GateConfig
from smc_core.evaluation.walk_forward import ChampionModel, WalkForwardConfig, evaluate_challenger
from smc_core.features import CATALOGUE
from smc_core.labels import Horizon
from smc_core.model import TrainConfig, load_package
from smc_core.model.calibration import expected_calibration_error
from smc_core.model.pipeline import BaseConfig, RunConfig, train_small_package
from smc_core.promotion import judge
from smc_core.synthetic import Instrument, SyntheticConfig, generate_bars

DAYS = 42
GATE_NAMES = ("deflated_sharpe", "pbo", "spa", "versus_champion", "calibration", "latency")
BASE = BaseConfig(train=TrainConfig(epochs=3, patience=2))
RUN = RunConfig(train_stride=3, train=TrainConfig(epochs=12, patience=2))
WALK = WalkForwardConfig(folds=2, min_train_fraction=0.4)


def evaluate(edge: str, symbols: dict[str, int], days: int, champion: ChampionModel | None = None):
    bars = {symbol: generate_bars(SyntheticConfig(days=days, edge=edge, edge_strength=1.0, seed=seed,
                                                  instrument=Instrument(symbol=symbol)))
            for symbol, seed in symbols.items()}
    data, traded = from_bars(bars, Horizon(), 20)
    return data, evaluate_challenger(data, traded, CATALOGUE, BASE, RUN, WALK, GateConfig(), latency_ms=2.0,
                                     champion=champion, trial_history=np.array([]))


def _table(evaluation) -> str:
    return "\n".join(f"{g.name}: {'pass' if g.passed else 'FAIL'} ({g.reason})" for g in evaluation.gates)


@pytest.mark.slow
def test_a_planted_edge_passes_every_gate():
    _, evaluation = evaluate("smc", {"ES": 3, "NQ": 4}, DAYS)
    assert evaluation.passed, _table(evaluation)
    assert judge([g.as_dict() for g in evaluation.gates], GATE_NAMES).passed  # what champion acts on
    metrics = evaluation.challenger.metrics()
    assert metrics["sharpe"] > 0 and metrics["trades"] >= 30 and metrics["net_pnl"] > 0
    assert set(evaluation.candidates) == set(WALK.candidate_thresholds)
    assert len(evaluation.trial_sharpes) == 2 * len(WALK.candidate_thresholds)  # LoRA and LightGBM
    best = max(evaluation.candidates, key=lambda t: np.nan_to_num(evaluation.candidates[t].metrics()["sharpe"],
                                                                  nan=-np.inf))
    assert evaluation.selected_threshold == best


@pytest.fixture(scope="module")
def without_edge(tmp_path_factory):
    """16 days of ES without edge, evaluated against a champion trained on 4 earlier days of the same kind."""
    earlier = {"ES": generate_bars(SyntheticConfig(days=4, start=date(2023, 11, 1), edge="none", seed=11))}
    path = tmp_path_factory.mktemp("champion") / "package"
    train_small_package(path, earlier, epochs=2)
    package = load_package(path)
    champion = ChampionModel("1", package.model, package.spec, package.temperature, entry_threshold=0.55)
    return evaluate("none", {"ES": 3}, 16, champion)


STATISTIC_SHOWN = {  # how each gate's reason shows its own statistic
    "deflated_sharpe": lambda g: f"DSR {g.statistic:.3f} ",
    "pbo": lambda g: f"PBO {g.statistic:.3f} ",
    "spa": lambda g: f"{g.statistic:.4f}",
    "versus_champion": lambda g: f"(Δ {g.statistic:+.2f}, need ≥ {g.threshold})",
    "calibration": lambda g: f"out-of-sample ECE after calibration {g.statistic:.4f} ",
    "latency": lambda g: f"{g.statistic:.4f} ",
}


@pytest.mark.slow
def test_a_market_without_edge_is_refused_on_every_statistic_computed(without_edge):
    data, evaluation = without_edge
    assert not evaluation.passed, _table(evaluation)
    gates = {g.name: g for g in evaluation.gates}
    assert tuple(gates) == GATE_NAMES
    # not the too-few-trades rule: the selected policy traded enough, and every statistic exists
    assert len(evaluation.challenger.trades) >= GateConfig().min_trades
    assert evaluation.champion.error is None and len(evaluation.champion.result.trades) >= GateConfig().min_trades
    for gate in evaluation.gates:
        assert np.isfinite(gate.statistic), f"{gate.name}: {gate.reason}"
        assert all(np.isfinite(c.statistic) for c in gate.conditions), f"{gate.name}: {gate.reason}"
        assert "too few trades" not in gate.reason and STATISTIC_SHOWN[gate.name](gate) in gate.reason, gate.reason
    assert set(gates["spa"].details) == {"flat", "champion"}  # tested against both benchmarks
    failed = {name for name, gate in gates.items() if not gate.passed}
    assert {"deflated_sharpe", "spa"} <= failed, _table(evaluation)
    # champion's verdict on the same results: refused, naming each failed gate with its own reason
    verdict = judge([g.as_dict() for g in evaluation.gates], GATE_NAMES)
    assert not verdict.passed and set(verdict.failed) == failed
    assert all(verdict.failed[name] == gates[name].reason for name in failed)


@pytest.mark.slow
def test_calibration_is_measured_on_windows_neither_early_stopping_nor_the_temperature_saw(without_edge):
    data, evaluation = without_edge
    walk = evaluation.walk
    assert len(walk.sets) == WALK.folds
    for sets in walk.sets:
        train, valid, check = (set(part.tolist()) for part in (sets.train, sets.valid, sets.check))
        assert train and valid and check
        assert not (train & valid or train & check or valid & check)  # three disjoint sets
        # and apart in time: every label of the learning sets was known before the next set begins
        assert data.t1[sets.train].max() < data.ts[sets.valid].min()
        assert data.t1[np.r_[sets.train, sets.valid]].max() < data.ts[sets.check].min()
    checked = np.concatenate([sets.check for sets in walk.sets])
    assert np.array_equal(np.sort(checked), np.flatnonzero(np.isfinite(walk.probabilities).all(axis=1)))
    by_hand = expected_calibration_error(walk.probabilities[checked], data.y[checked])
    assert walk.ece == by_hand == next(g for g in evaluation.gates if g.name == "calibration").statistic
    for fold, sets in zip(walk.folds, walk.sets):  # each fold's check ECE, and the validation ECE beside it
        assert fold["check_ece"] == expected_calibration_error(walk.probabilities[sets.check], data.y[sets.check])
        assert 0 <= fold["valid_ece"] <= 1 and fold["temperature"] > 0
