"""The versus_champion gate: each sub-condition judged and named on its own, and the drawdown
condition holding also when the champion loses money on the evaluation window.

Every backtest below is one bar per trading day on $100,000, opening with one loss and then
alternating a gain and a loss that never reach a new low, so the max drawdown is the opening
loss exactly (a loss of $1,000 is 1.00 %), and the Sharpe ratio is worked out by hand: with
an opening loss L and 40 pairs of a gain g and a loss l, the 81 daily P&Ls sum to
S = −L + 40(g − l), their mean is S/81, their sample variance (L² + 40g² + 40l² − S²/81)/80,
and the annualised Sharpe mean/sd·√252 (dollars or returns: the capital cancels).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smc_core.evaluation.backtest import BacktestResult, InstrumentSpec
from smc_core.evaluation.gates import Champion, GateConfig, evaluate_gates
from smc_core.promotion import judge

PAIRS = 40


def backtest(opening_loss: float, gain: float, loss: float) -> BacktestResult:
    pnl = np.array([-opening_loss] + [gain, -loss] * PAIRS, dtype=float)
    days = np.arange(len(pnl))
    return BacktestResult(pnl, np.ones(len(pnl), dtype=bool), pd.DataFrame({"pnl": pnl}),
                          pd.date_range("2024-01-02 15:00", periods=len(pnl), freq="D", tz="UTC").to_numpy(), days,
                          InstrumentSpec())


LOSING_SHALLOW = backtest(1000, 100, 100)     # ends at -1.0 %, drawdown 1.00 %
WINNING_SHALLOW = backtest(1000, 100, 50)     # ends at +1.0 %, drawdown 1.00 %
LOSING_DEEP = backtest(6000, 100, 100)        # ends at -6.0 %, drawdown 6.00 %
STRONG_DEEP = backtest(4000, 300, 100)        # ends at +4.0 %, drawdown 4.00 %
STRONG_SHALLOW = backtest(500, 300, 100)      # ends at +7.5 %, drawdown 0.50 %
WEAK_SHALLOW = backtest(500, 10, 10)          # ends at -0.5 %, drawdown 0.50 %
WEAK_DEEP = backtest(4000, 10, 10)            # ends at -4.0 %, drawdown 4.00 %
# Near the thresholds, against WINNING_SHALLOW (Sharpe 1.4372, drawdown 1.00 %):
SLIGHTLY_BETTER = backtest(1000, 101, 50)     # Sharpe 1.4911: +0.0540, short of the 0.1 needed
BETTER = backtest(1000, 102, 50)              # Sharpe 1.5448: +0.1077
DEEPER_BY_1_9 = backtest(2900, 300, 100)      # Sharpe 2.5712, drawdown 2.90 %: 1.90 points deeper, within 2
DEEPER_BY_2_1 = backtest(3100, 300, 100)      # Sharpe 2.3540, drawdown 3.10 %: 2.10 points deeper

SHARPE_BY_HAND = {  # (L, g, l) → S, variance, Sharpe; see the module docstring
    "LOSING_SHALLOW": -1.3110,    # S −1000, variance 22 345.68
    "WINNING_SHALLOW": 1.4372,    # S 1000, variance 18 595.68: 1000/81 / √18 595.68 · √252
    "LOSING_DEEP": -1.7443,       # S −6000, variance 454 444.44
    "STRONG_DEEP": 1.5757,        # S 4000, variance 247 530.86
    "STRONG_SHALLOW": 6.9722,     # S 7500, variance 44 444.44
    "WEAK_SHALLOW": -1.7359,      # S −500, variance 3 186.42
    "WEAK_DEEP": -1.7634,         # S −4000, variance 197 630.86
    "SLIGHTLY_BETTER": 1.4911,    # S 1040, variance 18 683.59
    "BETTER": 1.5448,             # S 1080, variance 18 772.00
    "DEEPER_BY_1_9": 2.5712,      # S 5100, variance 151 111.11
    "DEEPER_BY_2_1": 2.3540,      # S 4900, variance 166 419.75
}


def versus(challenger: BacktestResult, champion: BacktestResult):
    candidates = np.column_stack([challenger.returns, challenger.returns[::-1]])
    gates = evaluate_gates(challenger, candidates, np.array([0.0]), Champion(version="7", result=champion),
                           ece=0.01, latency_ms=1.0)
    return next(gate for gate in gates if gate.name == "versus_champion")


def test_the_fixtures_are_what_their_names_say():
    for result, total, drawdown in ((LOSING_SHALLOW, -0.01, 1.0), (WINNING_SHALLOW, 0.01, 1.0),
                                    (LOSING_DEEP, -0.06, 6.0), (STRONG_DEEP, 0.04, 4.0),
                                    (STRONG_SHALLOW, 0.075, 0.5), (WEAK_SHALLOW, -0.005, 0.5),
                                    (WEAK_DEEP, -0.04, 4.0)):
        metrics = result.metrics()
        assert metrics["total_return"] == pytest.approx(total) and metrics["max_drawdown_pct"] == pytest.approx(drawdown)
    assert STRONG_DEEP.metrics()["sharpe"] > WINNING_SHALLOW.metrics()["sharpe"] > 0
    assert WEAK_SHALLOW.metrics()["sharpe"] < LOSING_SHALLOW.metrics()["sharpe"] < 0
    for name, by_hand in SHARPE_BY_HAND.items():
        assert globals()[name].metrics()["sharpe"] == pytest.approx(by_hand, abs=5e-5), name


@pytest.mark.parametrize("challenger, sharpe_gain, drawdown_worsening, failed", [
    (SLIGHTLY_BETTER, 1.4911 - 1.4372, 0.0, ["sharpe_improvement"]),
    (BETTER, 1.5448 - 1.4372, 0.0, []),
    (DEEPER_BY_2_1, 2.3540 - 1.4372, 3.10 - 1.00, ["drawdown_worsening"]),
    (DEEPER_BY_1_9, 2.5712 - 1.4372, 2.90 - 1.00, []),
], ids=["Sharpe +0.054 fails", "Sharpe +0.108 passes", "drawdown +2.1 fails", "drawdown +1.9 passes"])
def test_a_better_champion_fails_each_condition_and_a_worse_one_passes_it(challenger, sharpe_gain,
                                                                         drawdown_worsening, failed):
    """Each condition on either side of its threshold (Sharpe +0.1, drawdown 2 points) against the
    same champion, figures by hand, through evaluate_gates and the verdict ``champion`` acts on."""
    gate = versus(challenger, WINNING_SHALLOW)
    statistics = {c.name: c.statistic for c in gate.conditions}
    assert statistics == {"sharpe_improvement": pytest.approx(sharpe_gain, abs=1e-4),
                          "drawdown_worsening": pytest.approx(drawdown_worsening, abs=1e-9)}
    assert gate.details["champion_sharpe"] == pytest.approx(1.4372, abs=5e-5)
    assert [c.name for c in gate.failed_conditions] == failed and gate.passed == (not failed)
    verdict = judge([gate.as_dict()], ("versus_champion",))
    assert verdict.passed == (not failed)
    if failed:
        shown = f"{statistics[failed[0]]:.4f}"
        assert verdict.failed["versus_champion"].startswith(f"failed {failed[0]} {shown} (needs ")


@pytest.mark.parametrize("champion", [LOSING_SHALLOW, WINNING_SHALLOW], ids=["champion loses", "champion wins"])
def test_a_deeper_drawdown_is_refused_whether_or_not_the_champion_made_money(champion):
    gate = versus(STRONG_DEEP, champion)
    assert not gate.passed
    assert [c.name for c in gate.failed_conditions] == ["drawdown_worsening"]
    drawdown = gate.failed_conditions[0]
    assert (drawdown.statistic, drawdown.threshold, drawdown.comparison) == (pytest.approx(3.0), 2.0, "<=")
    assert gate.reason.startswith("failed drawdown_worsening 3.0000 (needs <= 2.0): ")
    sharpe = next(c for c in gate.conditions if c.name == "sharpe_improvement")
    assert sharpe.passed and sharpe.statistic == gate.statistic > 0.1  # the headline stays the Sharpe gain
    assert ("lost money" in gate.reason) == (champion is LOSING_SHALLOW)


def test_a_losing_champion_with_the_deeper_drawdown_is_replaced():
    gate = versus(STRONG_DEEP, LOSING_DEEP)
    assert gate.passed and not gate.failed_conditions, gate.reason
    assert gate.conditions[1].statistic == pytest.approx(-2.0)
    assert gate.details["champion_total_return"] == pytest.approx(-0.06)


@pytest.mark.parametrize("challenger, champion, failed", [
    (STRONG_SHALLOW, WINNING_SHALLOW, []),                                             # better on both
    (WEAK_SHALLOW, WINNING_SHALLOW, ["sharpe_improvement"]),                          # worse Sharpe, better drawdown
    (STRONG_DEEP, WINNING_SHALLOW, ["drawdown_worsening"]),                           # better Sharpe, worse drawdown
    (WEAK_DEEP, WINNING_SHALLOW, ["sharpe_improvement", "drawdown_worsening"]),       # worse on both
    (WEAK_SHALLOW, LOSING_SHALLOW, ["sharpe_improvement"]),                           # worse than a loser is not enough
], ids=["better on both", "worse Sharpe", "worse drawdown", "worse on both", "worse than a losing champion"])
def test_each_sub_condition_is_judged_and_named_on_its_own(challenger, champion, failed):
    gate = versus(challenger, champion)
    assert gate.passed == (not failed)
    assert [c.name for c in gate.failed_conditions] == failed
    for condition in gate.failed_conditions:
        assert f"{condition.name} {condition.statistic:.4f} (needs {condition.comparison} {condition.threshold})" \
            in gate.reason
    if not failed:
        assert not gate.reason.startswith("failed")


def test_the_conditions_travel_with_the_stored_gate_record():
    record = versus(STRONG_DEEP, LOSING_SHALLOW).as_dict()
    assert [(c["name"], c["passed"]) for c in record["conditions"]] == [("sharpe_improvement", True),
                                                                       ("drawdown_worsening", False)]
    assert record["threshold"] == GateConfig().min_sharpe_improvement  # existing fields keep their meaning


def test_no_champion_and_an_unusable_champion_have_no_sub_conditions():
    gates = evaluate_gates(STRONG_SHALLOW, np.column_stack([STRONG_SHALLOW.returns] * 2), np.array([0.0]), None,
                           ece=0.01, latency_ms=1.0)
    first = next(gate for gate in gates if gate.name == "versus_champion")
    assert first.passed and first.conditions == []
    broken = evaluate_gates(STRONG_SHALLOW, np.column_stack([STRONG_SHALLOW.returns] * 2), np.array([0.0]),
                            Champion(version="7", error="champion 7: its package cannot be loaded"),
                            ece=0.01, latency_ms=1.0)
    gate = next(gate for gate in broken if gate.name == "versus_champion")
    assert not gate.passed and gate.conditions == [] and "cannot be loaded" in gate.reason
