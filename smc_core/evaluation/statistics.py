"""The statistics behind the promotion gates, each from its paper.

- Probabilistic and Deflated Sharpe Ratio: Bailey & López de Prado, "The Sharpe Ratio
  Efficient Frontier" (J. of Risk, 2012) and "The Deflated Sharpe Ratio: Correcting for
  Selection Bias, Backtest Overfitting and Non-Normality" (J. of Portfolio Management, 2014).
- Probability of Backtest Overfitting by combinatorially symmetric cross-validation (CSCV):
  Bailey, Borwein, López de Prado & Zhu, "The Probability of Backtest Overfitting"
  (J. of Computational Finance, 2017; SSRN 2326253, 2015).
- Hansen's Superior Predictive Ability test: Hansen, "A Test for Superior Predictive
  Ability" (J. of Business & Economic Statistics, 2005), through ``arch.bootstrap.SPA``.

Sharpe ratios here are per observation (not annualised): DSR and its trials must share one
frequency, and annualising would only rescale both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

EULER_GAMMA = 0.5772156649015329


def sharpe(returns: np.ndarray) -> float:
    """Per-observation Sharpe ratio (mean / sample standard deviation); NaN without variance."""
    returns = np.asarray(returns, dtype=np.float64)
    std = returns.std(ddof=1) if len(returns) > 1 else 0.0
    return float(returns.mean() / std) if std > 0 else float("nan")


def probabilistic_sharpe_ratio(sr: float, benchmark: float, n_obs: int, skew: float, kurtosis: float) -> float:
    """P(true SR > benchmark) given an estimate ``sr`` from ``n_obs`` returns with this skew and
    (non-excess) kurtosis: Φ((SR − SR*)·√(T−1) / √(1 − γ3·SR + (γ4 − 1)/4·SR²))."""
    variance = 1 - skew * sr + (kurtosis - 1) / 4 * sr ** 2
    if n_obs < 2 or not np.isfinite(sr) or variance <= 0:
        return float("nan")
    return float(stats.norm.cdf((sr - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(variance)))


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """E[max SR] of ``n_trials`` independent zero-skill trials with this SR variance (the DSR benchmark)."""
    if n_trials <= 1:
        return 0.0
    z = (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / n_trials) + EULER_GAMMA * stats.norm.ppf(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(max(sr_variance, 0.0)) * z)


def deflated_sharpe_ratio(returns: np.ndarray, n_trials: int, sr_variance: float) -> dict:
    """DSR of the selected strategy's ``returns`` after ``n_trials`` trials whose Sharpe ratios
    had variance ``sr_variance``: PSR against the expected maximum Sharpe of that many trials."""
    returns = np.asarray(returns, dtype=np.float64)
    sr = sharpe(returns)
    benchmark = expected_max_sharpe(n_trials, sr_variance)
    skew = float(stats.skew(returns)) if len(returns) > 2 else float("nan")
    kurtosis = float(stats.kurtosis(returns, fisher=False)) if len(returns) > 3 else float("nan")
    value = probabilistic_sharpe_ratio(sr, benchmark, len(returns), skew, kurtosis)
    return {"dsr": value, "sharpe": sr, "sr0": benchmark, "n_obs": len(returns), "n_trials": n_trials,
            "sr_variance": sr_variance, "skew": skew, "kurtosis": kurtosis}


@dataclass
class PBOResult:
    pbo: float
    logits: np.ndarray
    """λ per combination: logit of the in-sample winner's out-of-sample relative rank."""
    n_combinations: int
    n_blocks: int


def probability_of_backtest_overfitting(returns: np.ndarray, n_blocks: int = 16) -> PBOResult:
    """PBO by CSCV on a [T, N] matrix: returns of N candidate configurations over the same T periods.

    The rows are cut into ``n_blocks`` contiguous blocks; every half of the blocks is once
    the in-sample set and the rest out-of-sample. PBO is the share of splits in which the
    configuration that is best in sample ranks at or below the median out of sample.
    """
    matrix = np.asarray(returns, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError(f"PBO needs a [T, N >= 2] matrix of candidate returns, got {list(matrix.shape)}")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be even and >= 2, got {n_blocks}")
    t, n = matrix.shape
    size = t // n_blocks
    if size < 2:
        raise ValueError(f"{t} periods cannot fill {n_blocks} blocks of at least 2")
    blocks = matrix[t - size * n_blocks:].reshape(n_blocks, size, n)
    sums, squares = blocks.sum(axis=1), (blocks ** 2).sum(axis=1)
    chosen = np.array(list(combinations(range(n_blocks), n_blocks // 2)))
    in_sample = np.zeros((len(chosen), n_blocks))
    np.put_along_axis(in_sample, chosen, 1.0, axis=1)

    def block_sharpe(mask: np.ndarray) -> np.ndarray:
        count = mask.sum(axis=1, keepdims=True) * size
        mean = mask @ sums / count
        variance = (mask @ squares - count * mean ** 2) / (count - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(variance > 0, mean / np.sqrt(np.maximum(variance, 0)), 0.0)

    is_sharpe, oos_sharpe = block_sharpe(in_sample), block_sharpe(1 - in_sample)
    best = is_sharpe.argmax(axis=1)
    best_oos = oos_sharpe[np.arange(len(best)), best][:, None]
    rank = (oos_sharpe < best_oos).sum(axis=1) + 0.5 * ((oos_sharpe == best_oos).sum(axis=1) - 1) + 1
    omega = rank / (n + 1)
    logits = np.log(omega / (1 - omega))
    return PBOResult(float((logits <= 0).mean()), logits, len(chosen), n_blocks)


def spa_pvalue(benchmark_losses: np.ndarray, model_losses: np.ndarray, *, reps: int = 1000, seed: int = 0,
               block_size: int | None = None) -> float:
    """Hansen's consistent SPA p-value: H0 is that no model has lower expected loss than the benchmark."""
    from arch.bootstrap import SPA

    test = SPA(np.asarray(benchmark_losses, dtype=np.float64), np.asarray(model_losses, dtype=np.float64),
               block_size=block_size, reps=reps, bootstrap="stationary", seed=seed)
    test.compute()
    return float(test.pvalues["consistent"])
