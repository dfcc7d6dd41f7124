"""The trading policy (seed 000 §4): what to do with a prediction, given the position held.

One pure function serves the backtest, the service's response and, mirrored line for line,
the NinjaTrader strategy, so a backtest measures exactly what would be traded:

- confidence tiers: ≥ ``full_threshold`` full size, ≥ ``half_threshold`` half size, below
  that no entry (the call is reported but not traded);
- position check: no pyramiding (already long + long → hold), a reversal closes the
  position and enters the other way;
- protective orders: stop-loss and take-profit at ATR multiples from the entry price.
A ``skip`` (or low-confidence) call leaves an open position to its orders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smc_core.errors import ConfigError
from smc_core.labels import LABELS

LONG, SHORT, SKIP = (LABELS.index(name) for name in ("long", "short", "skip"))


@dataclass(frozen=True)
class PolicyConfig:
    full_threshold: float = 0.70
    half_threshold: float = 0.55
    contracts: int = 2
    """Contracts at full size; half size is half of it (at least one)."""
    stop_atr: float = 1.5
    target_atr: float = 1.5
    max_holding_bars: int | None = None
    """Close a trade at the close of its ``max_holding_bars``-th bar; None: only the stop, the
    target or the session close end it."""

    def __post_init__(self):
        if not 0 < self.half_threshold <= self.full_threshold <= 1:
            raise ConfigError(f"thresholds must satisfy 0 < half ({self.half_threshold}) <= full "
                              f"({self.full_threshold}) <= 1")
        if self.contracts < 1:
            raise ConfigError(f"contracts must be >= 1, got {self.contracts}")
        if self.stop_atr <= 0 or self.target_atr <= 0:
            raise ConfigError(f"stop_atr and target_atr must be > 0, got {self.stop_atr} and {self.target_atr}")
        if self.max_holding_bars is not None and self.max_holding_bars < 1:
            raise ConfigError(f"max_holding_bars must be >= 1 or None, got {self.max_holding_bars}")

    def size_fraction(self, confidence: float) -> float:
        """1.0 at full confidence, 0.5 in the middle tier, 0.0 below the entry threshold."""
        if confidence >= self.full_threshold:
            return 1.0
        return 0.5 if confidence >= self.half_threshold else 0.0

    def contracts_for(self, confidence: float) -> int:
        fraction = self.size_fraction(confidence)
        return 0 if fraction == 0 else max(1, int(round(self.contracts * fraction)))


@dataclass(frozen=True)
class Decision:
    action: str
    """``enter`` (from flat), ``reverse`` (close, then enter the other way), ``hold`` (already
    positioned that way: no pyramiding) or ``none`` (skip, or confidence below the threshold)."""
    direction: int
    """+1 long, -1 short, 0 for ``none``."""
    contracts: int
    size_fraction: float
    stop_distance: float
    """Points from the entry price to the stop (stop_atr × ATR); 0 when nothing is entered."""
    target_distance: float
    label: str
    confidence: float


def decide(probabilities, position: int, atr: float, config: PolicyConfig = PolicyConfig()) -> Decision:
    """The action for one prediction. ``probabilities`` are [long, short, skip]; ``position``
    is the signed number of contracts held."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    label = int(np.argmax(probabilities))
    confidence = float(probabilities[label])
    fraction = config.size_fraction(confidence)
    if label == SKIP or fraction == 0:
        return Decision("none", 0, 0, fraction if label != SKIP else 0.0, 0.0, 0.0, LABELS[label], confidence)
    direction = 1 if label == LONG else -1
    if position * direction > 0:
        return Decision("hold", direction, 0, fraction, 0.0, 0.0, LABELS[label], confidence)
    action = "reverse" if position else "enter"
    return Decision(action, direction, config.contracts_for(confidence), fraction, config.stop_atr * atr,
                    config.target_atr * atr, LABELS[label], confidence)
