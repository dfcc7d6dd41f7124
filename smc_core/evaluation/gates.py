"""Promotion gates: every test a challenger must pass before it may trade, with its reason.

A gate never passes by default: too few trades, returns without variance, a missing
champion package or a statistic that cannot be computed all fail with the reason stated.
The first model (no champion) is compared with the flat benchmark only.

A gate made of several sub-conditions (``versus_champion``: Sharpe and drawdown; ``spa``:
one p-value per benchmark) lists each in ``conditions`` with its own statistic and
threshold, and its reason names the ones that failed first.

``versus_champion``'s drawdown condition holds also when the champion loses money on the
evaluation window (decided for issue 19). The seed's rule (``min_sharpe_improvement=0.1``,
``max_drawdown_tolerance=0.02``) caps the risk a switch may add on top of the risk already
being run live; a losing incumbent does not enlarge that budget. Its drawdown is usually at
least its loss, so the cap is then loose anyway; it binds only when the champion lost
little while trading little, and a challenger that draws down much deeper is then exactly
the added risk the rule refuses. A champion that keeps losing is the performance sensor's,
the rollback's and the halt switch's business, not a reason to admit a deeper drawdown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from smc_core.evaluation.backtest import BacktestResult
from smc_core.evaluation.statistics import (deflated_sharpe_ratio, probability_of_backtest_overfitting, sharpe,
                                            spa_pvalue)


@dataclass(frozen=True)
class GateConfig:
    min_dsr: float = 0.95
    max_pbo: float = 0.5
    max_spa_pvalue: float = 0.05
    min_sharpe_improvement: float = 0.1
    """Annualised Sharpe of the challenger minus the champion's, on the same bars."""
    max_drawdown_worsening: float = 2.0
    """Percentage points by which the challenger's max drawdown may exceed the champion's."""
    max_ece: float = 0.05
    max_latency_ms: float = 5.0
    """Single-window forward p50 (merged weights, one thread)."""
    min_trades: int = 30
    pbo_blocks: int = 16
    spa_reps: int = 1000
    seed: int = 0


@dataclass
class Condition:
    """One sub-condition of a gate, judged on its own statistic against its own threshold."""

    name: str
    passed: bool
    statistic: float
    threshold: float
    comparison: str
    """How the statistic must relate to the threshold to pass: ">=", "<=" or "<"."""

    def describe(self) -> str:
        shown = "undefined" if not np.isfinite(self.statistic) else f"{self.statistic:.4f}"
        return f"{self.name} {shown} (needs {self.comparison} {self.threshold})"


@dataclass
class GateResult:
    name: str
    passed: bool
    statistic: float
    """The gate's headline statistic (for versus_champion the Sharpe improvement, for spa the
    worst p-value); each sub-condition's own statistic is in ``conditions``."""
    threshold: float
    reason: str
    details: dict = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)

    @property
    def failed_conditions(self) -> list[Condition]:
        return [condition for condition in self.conditions if not condition.passed]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Champion:
    """The model currently trading, backtested on the same bars; ``error`` when it cannot be."""

    version: str | None = None
    result: BacktestResult | None = None
    error: str | None = None


def evaluate_gates(challenger: BacktestResult, candidates: np.ndarray, trial_sharpes: np.ndarray,
                   champion: Champion | None, ece: float, latency_ms: float,
                   config: GateConfig = GateConfig()) -> list[GateResult]:
    """All gates for one challenger. ``candidates`` is [T, N] per-bar returns of every policy
    tried on the same bars; ``trial_sharpes`` the per-bar Sharpe of every trial in the
    experiment's history, this run's included."""
    returns = challenger.returns
    trades = len(challenger.trades)
    problem = _unusable(returns, trades, config)
    return [
        _dsr(returns, trial_sharpes, problem, config),
        _pbo(candidates, config),
        _spa(returns, champion, problem, config),
        _versus_champion(challenger, champion, problem, config),
        _bounded("calibration", ece, config.max_ece, "out-of-sample ECE after calibration"),
        _bounded("latency", latency_ms, config.max_latency_ms, "single-window forward p50 (ms)"),
    ]


def _unusable(returns: np.ndarray, trades: int, config: GateConfig) -> str | None:
    if trades < config.min_trades:
        return f"too few trades for a statistic: {trades} (minimum {config.min_trades})"
    if not np.isfinite(returns).all() or np.std(returns) == 0:
        return "the challenger's returns have no variance"
    return None


def _dsr(returns, trial_sharpes, problem, config) -> GateResult:
    trial_sharpes = np.asarray(trial_sharpes, dtype=np.float64)
    trial_sharpes = trial_sharpes[np.isfinite(trial_sharpes)]
    if problem:
        return GateResult("deflated_sharpe", False, float("nan"), config.min_dsr, problem)
    variance = float(trial_sharpes.var(ddof=1)) if len(trial_sharpes) > 1 else 0.0
    result = deflated_sharpe_ratio(returns, max(len(trial_sharpes), 1), variance)
    value = result["dsr"]
    if not np.isfinite(value):
        return GateResult("deflated_sharpe", False, value, config.min_dsr, "DSR is undefined for these returns",
                          result)
    passed = value > config.min_dsr
    return GateResult("deflated_sharpe", passed, value, config.min_dsr,
                      f"DSR {value:.3f} {'>' if passed else '<='} {config.min_dsr} after {result['n_trials']} "
                      f"trials (SR {result['sharpe']:.4f} per bar vs expected max {result['sr0']:.4f})", result)


def _pbo(candidates, config) -> GateResult:
    try:
        result = probability_of_backtest_overfitting(candidates, config.pbo_blocks)
    except ValueError as error:
        return GateResult("pbo", False, float("nan"), config.max_pbo, f"PBO cannot be computed: {error}")
    passed = result.pbo <= config.max_pbo
    return GateResult("pbo", passed, result.pbo, config.max_pbo,
                      f"PBO {result.pbo:.3f} {'<=' if passed else '>'} {config.max_pbo} over "
                      f"{np.shape(candidates)[1]} candidate policies, {result.n_combinations} CSCV splits",
                      {"n_candidates": int(np.shape(candidates)[1]), "n_combinations": result.n_combinations,
                       "median_logit": float(np.median(result.logits))})


def _spa(returns, champion, problem, config) -> GateResult:
    if problem:
        return GateResult("spa", False, float("nan"), config.max_spa_pvalue, problem)
    benchmarks = {"flat": np.zeros_like(returns)}
    if champion is not None and champion.result is not None:
        benchmarks["champion"] = champion.result.returns
    elif champion is not None and champion.error:
        return GateResult("spa", False, float("nan"), config.max_spa_pvalue, champion.error)
    pvalues = {}
    for name, benchmark in benchmarks.items():
        if len(benchmark) != len(returns):
            return GateResult("spa", False, float("nan"), config.max_spa_pvalue,
                              f"the {name} benchmark covers {len(benchmark)} bars, the challenger {len(returns)}")
        try:
            pvalues[name] = spa_pvalue(-benchmark, -returns[:, None], reps=config.spa_reps, seed=config.seed)
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as error:
            return GateResult("spa", False, float("nan"), config.max_spa_pvalue, f"SPA against {name} failed: {error}")
    conditions = [Condition(f"spa_versus_{name}", bool(np.isfinite(p) and p < config.max_spa_pvalue), p,
                            config.max_spa_pvalue, "<") for name, p in pvalues.items()]
    worst = max(pvalues.values())
    passed = all(condition.passed for condition in conditions)
    return GateResult("spa", passed, worst, config.max_spa_pvalue,
                      _failed_first(conditions) + "consistent SPA p-value "
                      + ", ".join(f"{k} {v:.4f}" for k, v in pvalues.items())
                      + (" (all" if passed else " (not all") + f" < {config.max_spa_pvalue})", pvalues, conditions)


def _versus_champion(challenger, champion, problem, config) -> GateResult:
    """Sharpe at least ``min_sharpe_improvement`` above the champion's on the same bars, and max
    drawdown at most ``max_drawdown_worsening`` points deeper, whether or not the champion
    made money there (see the module docstring)."""
    name, threshold = "versus_champion", config.min_sharpe_improvement
    if champion is None:
        return GateResult(name, True, float("nan"), threshold, "no champion yet: compared with the benchmarks only")
    if champion.error:
        return GateResult(name, False, float("nan"), threshold, champion.error)
    if problem:
        return GateResult(name, False, float("nan"), threshold, problem)
    mine, theirs = challenger.metrics(), champion.result.metrics()
    improvement = mine["sharpe"] - theirs["sharpe"]
    worsening = mine["max_drawdown_pct"] - theirs["max_drawdown_pct"]
    details = {"sharpe": mine["sharpe"], "champion_sharpe": theirs["sharpe"], "max_drawdown_pct":
               mine["max_drawdown_pct"], "champion_max_drawdown_pct": theirs["max_drawdown_pct"],
               "champion_total_return": theirs["total_return"], "champion_version": champion.version}
    conditions = [
        Condition("sharpe_improvement", bool(np.isfinite(improvement) and improvement >= threshold), improvement,
                  threshold, ">="),
        Condition("drawdown_worsening", bool(np.isfinite(worsening) and worsening <= config.max_drawdown_worsening),
                  worsening, config.max_drawdown_worsening, "<="),
    ]
    if not np.isfinite(improvement):
        return GateResult(name, False, improvement, threshold, _failed_first(conditions) + "a Sharpe ratio is "
                          "undefined", details, conditions)
    losing = " (the champion lost money on these bars; its drawdown still bounds the challenger's)" \
        if theirs["total_return"] < 0 else ""
    return GateResult(name, all(c.passed for c in conditions), improvement, threshold,
                      _failed_first(conditions)
                      + f"Sharpe {mine['sharpe']:.2f} vs champion {theirs['sharpe']:.2f} (Δ {improvement:+.2f}, "
                      f"need ≥ {threshold}); max drawdown {mine['max_drawdown_pct']:.2f}% vs "
                      f"{theirs['max_drawdown_pct']:.2f}% (Δ {worsening:+.2f} points, may be worse by ≤ "
                      f"{config.max_drawdown_worsening}){losing}", details, conditions)


def _failed_first(conditions: list[Condition]) -> str:
    """The failing sub-conditions with their own statistic and threshold, to lead a reason."""
    failed = [condition.describe() for condition in conditions if not condition.passed]
    return f"failed {'; '.join(failed)}: " if failed else ""


def _bounded(name: str, value: float, limit: float, what: str) -> GateResult:
    if value is None or not np.isfinite(value):
        return GateResult(name, False, float("nan"), limit, f"{what} is unknown")
    passed = value <= limit
    return GateResult(name, bool(passed), float(value), limit, f"{what} {value:.4f} {'<=' if passed else '>'} {limit}")


def trial_sharpes_of(candidates: np.ndarray) -> np.ndarray:
    """Per-bar Sharpe of each candidate column: this run's trials for the DSR history."""
    return np.array([sharpe(column) for column in np.asarray(candidates, dtype=np.float64).T])
