"""Which features carry a model: permutation importance on the validation windows, LightGBM's
gain for the baseline, and what changed from the model before.

Why permutation: it asks the trained model itself, on windows it was not trained on, how much
worse it predicts when one feature's information is destroyed, in the loss it was calibrated
for (validation log loss at its temperature). It needs no access to the model's insides, so
the transformer and any later model are measured the same way. A feature is permuted across
windows as a whole (all ``L`` bars of a window come from one other window), so what is broken
is the feature's link to the label, not the bar-to-bar shape inside a window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Loss = Callable[[np.ndarray, np.ndarray], float]
"""(numeric windows [N, L, n_num], categorical windows [N, L, n_cat]) → a loss, lower is better."""


@dataclass(frozen=True)
class FeatureImportance:
    """Importance per feature: for permutation, the mean rise in validation loss over ``repeats``
    shuffles (``spread`` their standard deviation); for gain, LightGBM's total gain (spread 0)."""

    method: str
    names: tuple[str, ...]
    values: tuple[float, ...]
    spread: tuple[float, ...]
    baseline_loss: float | None = None
    windows: int | None = None
    repeats: int | None = None

    def ranked(self) -> list[tuple[str, float, float]]:
        """(name, value, spread), the most important first; ties by name, so the order is stable."""
        return sorted(zip(self.names, self.values, self.spread), key=lambda item: (-item[1], item[0]))

    def as_dict(self) -> dict:
        return {"method": self.method, "baseline_loss": self.baseline_loss, "windows": self.windows,
                "repeats": self.repeats,
                "features": [{"name": name, "value": value, "spread": spread} for name, value, spread in self.ranked()]}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureImportance":
        rows = data["features"]
        return cls(data["method"], tuple(r["name"] for r in rows), tuple(float(r["value"]) for r in rows),
                   tuple(float(r["spread"]) for r in rows), data.get("baseline_loss"), data.get("windows"),
                   data.get("repeats"))


def permutation_importance(loss: Loss, numeric: np.ndarray, categorical: np.ndarray, numeric_names: list[str],
                           categorical_names: list[str], *, repeats: int = 2, seed: int = 0) -> FeatureImportance:
    """Each feature's rise in ``loss`` when its column is shuffled across windows, ``repeats``
    times with seeded permutations (the same permutations for every feature, so features are
    compared on equal terms)."""
    numeric, categorical = np.asarray(numeric), np.asarray(categorical)
    if numeric.shape[-1] != len(numeric_names) or categorical.shape[-1] != len(categorical_names):
        raise ValueError(f"{numeric.shape[-1]} numeric and {categorical.shape[-1]} categorical columns, "
                         f"{len(numeric_names)} and {len(categorical_names)} names")
    if len(numeric) < 2:
        raise ValueError(f"permutation importance needs at least 2 windows, got {len(numeric)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(numeric)) for _ in range(repeats)]
    baseline = float(loss(numeric, categorical))
    names, values, spread = [], [], []
    for block, column_names in ((numeric, numeric_names), (categorical, categorical_names)):
        for column, name in enumerate(column_names):
            rises = []
            saved = block[:, :, column].copy()
            for order in orders:
                block[:, :, column] = saved[order]
                rises.append(float(loss(numeric, categorical)) - baseline)
            block[:, :, column] = saved  # restored: the caller's windows are unchanged
            names.append(name)
            values.append(float(np.mean(rises)))
            spread.append(float(np.std(rises)))
    return FeatureImportance("permutation", tuple(names), tuple(values), tuple(spread), baseline, len(numeric),
                             repeats)


def gain_importance(model, names: list[str]) -> FeatureImportance:
    """LightGBM's total split gain per feature (the baseline's own view of what it used); ``model``
    a ``lightgbm.Booster`` or the scikit-learn wrapper holding one."""
    booster = getattr(model, "booster_", model)
    gains = np.asarray(booster.feature_importance(importance_type="gain"), dtype=np.float64)
    if len(gains) != len(names):
        raise ValueError(f"the booster has {len(gains)} features, {len(names)} names were given")
    return FeatureImportance("gain", tuple(names), tuple(float(g) for g in gains), (0.0,) * len(names))


@dataclass(frozen=True)
class Change:
    name: str
    rank: int
    previous_rank: int | None
    value: float
    spread: float
    previous_value: float | None

    @property
    def moved(self) -> int | None:
        """Places risen (positive) or fallen (negative) since the model before; None when new."""
        return None if self.previous_rank is None else self.previous_rank - self.rank


def changes(current: FeatureImportance, previous: FeatureImportance | None) -> list[Change]:
    """Every feature of ``current`` in its rank order, beside its rank and value in ``previous``
    (1-based ranks; a feature the previous model did not have has none)."""
    before = {} if previous is None else {name: (rank, value) for rank, (name, value, _)
                                          in enumerate(previous.ranked(), start=1)}
    listed = []
    for rank, (name, value, spread) in enumerate(current.ranked(), start=1):
        previous_rank, previous_value = before.get(name, (None, None))
        listed.append(Change(name, rank, previous_rank, value, spread, previous_value))
    return listed


def movers(current: FeatureImportance, previous: FeatureImportance | None, count: int = 5) -> dict[str, list[Change]]:
    """The features that rose and fell most in rank since the model before (``count`` each)."""
    moved = [c for c in changes(current, previous) if c.moved]
    return {"rose": sorted((c for c in moved if c.moved > 0), key=lambda c: (-c.moved, c.rank))[:count],
            "fell": sorted((c for c in moved if c.moved < 0), key=lambda c: (c.moved, c.rank))[:count]}


def importance_markdown(current: FeatureImportance, previous: FeatureImportance | None, previous_label: str,
                        top: int = 15) -> str:
    """The top features with their rank change, then the biggest risers and fallers."""
    unit = "rise in validation log loss" if current.method == "permutation" else "total gain"
    lines = [f"| rank | feature | {unit} | ± | rank in {previous_label} |", "|---:|---|---:|---:|---:|"]
    for change in changes(current, previous)[:top]:
        was = "new" if change.previous_rank is None else f"{change.previous_rank} ({_signed(change.moved)})"
        lines.append(f"| {change.rank} | {change.name} | {change.value:.5f} | {change.spread:.5f} | {was} |")
    if previous is not None:
        moved = movers(current, previous)
        for direction in ("rose", "fell"):
            listed = ", ".join(f"{c.name} {c.previous_rank}→{c.rank}" for c in moved[direction]) or "none"
            lines.append(f"\n**{direction}** since {previous_label}: {listed}")
    else:
        lines.append(f"\nNo earlier model's importance to compare with ({previous_label}).")
    return "\n".join(lines)


def importance_chart(importance: FeatureImportance, path: Path, title: str, top: int = 20) -> Path:
    """A horizontal bar chart of the ``top`` features (error bars: the spread over repeats), as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = importance.ranked()[:top][::-1]
    figure = Figure(figsize=(7, 0.3 * len(ranked) + 1.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh([r[0] for r in ranked], [r[1] for r in ranked], xerr=[r[2] for r in ranked], color="tab:blue",
              alpha=0.8)
    axes.axvline(0, color="grey", linewidth=0.8)
    axes.set(title=title, xlabel="rise in validation log loss when shuffled" if importance.method == "permutation"
             else "total gain")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _signed(value: int | None) -> str:
    return "±0" if not value else f"{value:+d}"
