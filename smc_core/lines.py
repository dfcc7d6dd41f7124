"""Model lines: one trained, gated and served model per (timeframe, label horizon).

SMC traders read structure on several timeframes and hold for several periods; one model
cannot be validated for all of them. A line is its own registered model (its own versions,
``challenger``, ``champion``, ``previous`` aliases and promotion record), trained on the
features and labels of its timeframe.

The **main line** is the data's own timeframe and the label horizon its training is
configured with; it is registered as ``smc-lora`` (the name every registry, ``MODEL_URI``
and runbook already uses) and its assets keep their plain keys. ``SMC_MODEL_LINES`` adds
lines: ``5m`` (a 5-minute line with the default horizon, registered ``smc-lora-5m-h15``) or
``15m:8`` (8 bars of 15 minutes, ``smc-lora-15m-h8``). Each added line's assets carry its
key prefix (``line_5m_h15/lora_model`` …) and its jobs its suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smc_core.errors import ConfigError
from smc_core.labels import Horizon
from smc_core.registry import MODEL_NAME
from smc_core.settings import resampled_timeframes

_SPEC = re.compile(r"^\s*([0-9]+[smhd])\s*(?::\s*([0-9]+)\s*)?$")


@dataclass(frozen=True)
class ModelLine:
    """One line. ``timeframe`` and ``horizon_bars`` are None on the main line: the data's
    timeframe and the horizon of the training's config."""

    timeframe: str | None = None
    horizon_bars: int | None = None

    @property
    def main(self) -> bool:
        return self.timeframe is None

    @property
    def slug(self) -> str:
        """``5m_h15``: the added line's asset key prefix (``line_5m_h15``) and job suffix."""
        return "main" if self.main else f"{self.timeframe}_h{self.horizon_bars}"

    @property
    def name(self) -> str:
        """The registered model."""
        return MODEL_NAME if self.main else f"{MODEL_NAME}-{self.timeframe}-h{self.horizon_bars}"

    @property
    def key_prefix(self) -> list[str]:
        return [] if self.main else [f"line_{self.slug}"]

    def step(self, asset: str) -> str:
        """The Dagster step (op) of one of the line's assets: ``lora_model``, ``line_5m_h15__lora_model``."""
        return asset if self.main else f"line_{self.slug}__{asset}"

    def suffixed(self, name: str) -> str:
        """A job, schedule or sensor of the line: ``retrain_job``, ``retrain_job_5m_h15``."""
        return name if self.main else f"{name}_{self.slug}"

    def horizon(self, configured: Horizon) -> Horizon:
        """The horizon this line learns: the configured one on the main line; on an added line its
        own bar count (ATR barriers as configured), and a configured count that differs is an error."""
        if self.main or configured.bars == self.horizon_bars:
            return configured
        if configured.bars != Horizon.bars:
            raise ConfigError(f"line {self.name} learns {self.horizon_bars}-bar labels, but the run config asks "
                              f"for {configured.bars} bars: add a line {self.timeframe}:{configured.bars} "
                              "(SMC_MODEL_LINES) instead")
        return Horizon(self.horizon_bars, configured.up_atr, configured.down_atr, configured.min_move_atr)


MAIN_LINE = ModelLine()


def is_line_model(name: str) -> bool:
    """Whether ``name`` is a model line's registered model (``smc-lora``, ``smc-lora-5m-h15`` …)."""
    return name == MODEL_NAME or name.startswith(f"{MODEL_NAME}-")


def model_lines(base: str, resampled: str | None, value: str | None) -> tuple[ModelLine, ...]:
    """The main line and the lines ``value`` (SMC_MODEL_LINES: ``5m,15m:8``) adds, checked: an added
    line needs features on its timeframe, so it must be the data's or one the lineage resamples."""
    lines = [MAIN_LINE]
    computed = (base, *resampled_timeframes(base, resampled, "SMC_RESAMPLED"))
    for part in (value or "").split(","):
        if not part.strip():
            continue
        match = _SPEC.match(part)
        if not match:
            raise ConfigError(f"SMC_MODEL_LINES: {part.strip()!r} is not a line; write <timeframe>[:<horizon bars>], "
                              "e.g. 5m or 15m:8")
        timeframe, bars = match.group(1), int(match.group(2) or Horizon.bars)
        if timeframe not in computed:
            raise ConfigError(f"SMC_MODEL_LINES: line {part.strip()} has no features: the lineage computes "
                              f"{', '.join(computed)} (SMC_TIMEFRAME and SMC_RESAMPLED)")
        if bars < 1:
            raise ConfigError(f"SMC_MODEL_LINES: line {part.strip()} needs a horizon of at least 1 bar")
        line = ModelLine(timeframe, bars)
        if line in lines:
            raise ConfigError(f"SMC_MODEL_LINES: line {part.strip()} is listed twice")
        lines.append(line)
    return tuple(lines)
