"""The risk block of every answer: the protective orders the gates validated, in prices.

Why the server computes them: the backtest behind the gates places the stop and target at
``stop_atr`` and ``target_atr`` times the project's ATR (the simple mean of the true range,
the ``atr`` feature) from the entry. A strategy that computed its own ATR (NinjaTrader's
is Wilder's) would trade something the gates never saw. Distances are whole ticks; prices
are given from the decision bar's close, and the same distances apply from the fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from smc_core.errors import ConfigError
from smc_core.evaluation.backtest import InstrumentSpec
from smc_core.policy import PolicyConfig

_POLICY, _INSTRUMENT = PolicyConfig(), InstrumentSpec()


@dataclass(frozen=True)
class RiskTerms:
    """Stop and target multiples, time exit and tick of the evaluation a model passed."""

    stop_atr: float = _POLICY.stop_atr
    target_atr: float = _POLICY.target_atr
    max_holding_bars: int | None = _POLICY.max_holding_bars
    """None: no time exit (the stop, the target or the session close ends a trade)."""
    tick_size: float = _INSTRUMENT.tick_size

    def __post_init__(self):
        for name in ("stop_atr", "target_atr", "tick_size"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"risk terms: {name} must be a finite number > 0, got {value!r}")
        if self.max_holding_bars is not None and self.max_holding_bars < 1:
            raise ConfigError(f"risk terms: max_holding_bars must be >= 1 or unset, got {self.max_holding_bars!r}")

    @classmethod
    def of(cls, policy: PolicyConfig, instrument: InstrumentSpec) -> "RiskTerms":
        return cls(policy.stop_atr, policy.target_atr, policy.max_holding_bars, instrument.tick_size)

    def for_symbol(self, symbol: str) -> "RiskTerms":
        """These terms with ``symbol``'s tick from the instruments file (a model may serve several)."""
        from smc_core.instruments import serving_instrument

        tick = serving_instrument(symbol).tick_size
        return self if tick == self.tick_size else replace(self, tick_size=tick)

    def to_tags(self) -> dict[str, str]:
        """As registry tags, set when a version is promoted (what it was validated with)."""
        tags = {"risk.stop_atr": repr(self.stop_atr), "risk.target_atr": repr(self.target_atr),
                "risk.tick_size": repr(self.tick_size)}
        if self.max_holding_bars is not None:
            tags["risk.max_holding_bars"] = str(self.max_holding_bars)
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "RiskTerms | None":
        """The terms recorded at promotion, or None for a version promoted before they were recorded."""
        if "risk.stop_atr" not in tags:
            return None
        holding = tags.get("risk.max_holding_bars")
        return cls(float(tags["risk.stop_atr"]), float(tags["risk.target_atr"]),
                   int(holding) if holding else None, float(tags["risk.tick_size"]))

    def block(self, close: float, atr: float, label: str) -> dict:
        """``risk`` of one answer; prices only for a long or short call."""
        decimals = max(0, -math.floor(math.log10(self.tick_size)) + 2)
        stop = round(max(1, round(self.stop_atr * atr / self.tick_size)) * self.tick_size, decimals)
        target = round(max(1, round(self.target_atr * atr / self.tick_size)) * self.tick_size, decimals)
        direction = {"long": 1, "short": -1}.get(label, 0)
        anchor = round(round(close / self.tick_size) * self.tick_size, decimals)
        return {
            "atr": atr, "stop_distance": stop, "target_distance": target,
            "stop_price": round(anchor - direction * stop, decimals) if direction else None,
            "target_price": round(anchor + direction * target, decimals) if direction else None,
            "max_holding_bars": self.max_holding_bars, "tick_size": self.tick_size,
        }
