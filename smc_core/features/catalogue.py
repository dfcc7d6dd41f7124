"""The feature catalogue: every column's name, kind, lookback and meaning, in model order.

The catalogue is the single source of truth for the feature set: the batch asset, the
service and the model's encoder all take names, order and lookbacks from here, and its
version hash (names, kinds, lookbacks, parameters, code revision) is stored with every
feature row and every model, so a mismatch is caught instead of silently mis-aligned.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from dataclasses import asdict, dataclass, field

# Bump when a feature's computation changes without its name, kind or lookback changing.
CODE_REVISION = 1


@dataclass(frozen=True)
class FeatureParams:
    atr_window: int = 14
    smc_window: int = 30
    long_swing: int = 5
    short_swing: int = 2
    fvg_min_atr: float = 0.0


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str
    """float | int | bool | category (categories stored as integer codes)."""
    lookback: int
    """The value at bar t depends on bars t-lookback+1 … t only."""
    group: str
    description: str
    categories: tuple[str, ...] = field(default=())


def build_catalogue(params: FeatureParams) -> tuple[FeatureSpec, ...]:
    atr_lb = params.atr_window + 1  # true range reads the previous close
    smc_lb = max(params.smc_window, atr_lb)  # structure in the window, scaled by atr[t]

    def smc(name, kind, description, categories=()):
        return FeatureSpec(name, kind, smc_lb, "smc", description, tuple(categories))

    def tech(name, lookback, description, kind="float"):
        return FeatureSpec(name, kind, lookback, "technical", description)

    def time_(name, description, kind="float"):
        return FeatureSpec(name, kind, 1, "time", description)

    specs = [
        FeatureSpec("atr", "float", atr_lb, "seed", f"Average true range: simple mean of {params.atr_window} true ranges, price units."),
        FeatureSpec("delta", "float", 1, "seed", "Order-flow delta (ask − bid volume) from the data, else estimated from the close location."),
        FeatureSpec("delta_is_estimate", "bool", 1, "seed", "1 when delta was estimated because the data had none."),
        smc("ext_dir", "int", "Direction of the last confirmed structure break on long swings (+1, −1, 0)."),
        smc("int_dir", "int", "Direction of the last confirmed structure break on short swings (+1, −1, 0)."),
        smc("bos_bull", "bool", "A bullish break of structure happens at this bar (long swings)."),
        smc("bos_bear", "bool", "A bearish break of structure happens at this bar (long swings)."),
        smc("choch_bull", "bool", "A bullish change of character happens at this bar (long swings)."),
        smc("choch_bear", "bool", "A bearish change of character happens at this bar (long swings)."),
        smc("has_fvg_bull", "bool", "An unfilled bullish 3-bar fair-value gap is active."),
        smc("has_fvg_bear", "bool", "An unfilled bearish 3-bar fair-value gap is active."),
        smc("fvg_bull_size_atr", "float", "Size of the most recent active bullish FVG, in ATRs (0 if none)."),
        smc("fvg_bear_size_atr", "float", "Size of the most recent active bearish FVG, in ATRs (0 if none)."),
        smc("fvg_retest_type", "category", "How this bar interacts with the most recent active FVG.",
            ("none", "wick", "body", "through")),
        smc("fvg_penetration_ratio", "float", "Depth this bar's wick reached into the most recent active FVG (fraction of its size)."),
        smc("has_ob_bull", "bool", "An unmitigated bullish order block is active."),
        smc("has_ob_bear", "bool", "An unmitigated bearish order block is active."),
        smc("mgann_leg_index", "int", "Signed count of swing legs since the last structure break."),
        smc("pb_wave_strength_ok", "bool", "The current pullback retraces 38.2–78.6 % of the impulse on lighter volume."),
        smc("confluence_score", "float", "Share of five SMC conditions aligned with ext_dir, in [0, 1]."),
        smc("dist_swing_high_atr", "float", "Distance from the close up to the highest confirmed swing high in the window, in ATRs."),
        smc("dist_swing_low_atr", "float", "Distance from the lowest confirmed swing low in the window up to the close, in ATRs."),
        smc("bars_since_break", "int", "Bars since the last structure break in the window (the window length if none)."),
    ]
    for k in (1, 2, 3, 5, 10, 20):
        specs.append(tech(f"ret_{k}", k + 1, f"Log return over the last {k} bar(s)."))
    specs += [
        tech("range_atr", atr_lb, "Bar range (high − low) in ATRs."),
        tech("body_ratio", 1, "(close − open) / (high − low); 0 for a zero-range bar."),
        tech("upper_wick_ratio", 1, "(high − max(open, close)) / (high − low)."),
        tech("lower_wick_ratio", 1, "(min(open, close) − low) / (high − low)."),
        tech("gap_atr", atr_lb, "(open − previous close) in ATRs."),
        tech("rv_10", 11, "Realised volatility: sample std of 1-bar log returns over 10 bars."),
        tech("rv_20", 21, "Realised volatility: sample std of 1-bar log returns over 20 bars."),
        tech("atr_pct", atr_lb, "ATR as a fraction of the close."),
        tech("rsi_14", 15, "Cutler's RSI over 14 changes (simple means), 0–100."),
        tech("z_close_20", 20, "z-score of the close against its 20-bar mean and std."),
        tech("z_volume_20", 20, "z-score of the volume against its 20-bar mean and std."),
        tech("volume_ratio_20", 20, "Volume over its 20-bar mean."),
        tech("close_sma_20", 20, "close / 20-bar mean close − 1."),
        tech("sma_5_20", 20, "5-bar mean close / 20-bar mean close − 1."),
        tech("stoch_20", 20, "Close location in the 20-bar high–low range, 0–1."),
        tech("delta_ratio", 1, "delta / volume."),
        tech("cum_delta_ratio_10", 10, "Sum of delta over sum of volume, last 10 bars."),
        time_("tod_sin", "sin of the exchange-local time of day of the bar close."),
        time_("tod_cos", "cos of the exchange-local time of day of the bar close."),
        time_("dow_sin", "sin of the trading day's weekday."),
        time_("dow_cos", "cos of the trading day's weekday."),
        time_("is_rth", "1 inside regular trading hours.", kind="bool"),
        time_("session_progress", "Share of the trading session elapsed at the bar close, 0–1."),
    ]
    return tuple(specs)


@dataclass(frozen=True)
class FeatureCatalogue:
    params: FeatureParams
    specs: tuple[FeatureSpec, ...]

    @classmethod
    def default(cls) -> "FeatureCatalogue":
        params = FeatureParams()
        return cls(params, build_catalogue(params))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def max_lookback(self) -> int:
        return max(s.lookback for s in self.specs)

    def required_context(self, sequence_length: int) -> int:
        """Bars a request must carry so the last ``sequence_length`` rows are complete."""
        return sequence_length + self.max_lookback - 1

    @cached_property
    def version(self) -> str:
        """A hash of what the features are: computed once (the service logs it with every answer)."""
        payload = {"revision": CODE_REVISION, "params": asdict(self.params),
                   "specs": [[s.name, s.kind, s.lookback, list(s.categories)] for s in self.specs]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def spec(self, name: str) -> FeatureSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict:
        return {"version": self.version, "params": asdict(self.params),
                "features": [asdict(s) for s in self.specs], "max_lookback": self.max_lookback}


CATALOGUE = FeatureCatalogue.default()
