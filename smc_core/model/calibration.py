"""Temperature scaling and the measures that show whether probabilities can be taken at face value.

Why temperature: one scalar fitted on validation logits fixes over- or under-confidence
without changing which class wins, so accuracy-type metrics are untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def class_weight_offsets(weights) -> np.ndarray:
    """Logit offsets that undo class-weighted training.

    A model trained with class weights w learns q(c|x) ∝ w_c·p(c|x): rare classes are
    inflated on purpose so they are learned at all. Adding −log w_c to its logits restores
    the data's own posterior p(c|x) before temperature scaling (classes absent from
    training, w_c = 0, get no offset). Temperature alone cannot do this: it rescales all
    logits together and cannot move mass between classes.
    """
    weights = np.asarray(weights, dtype=np.float64)
    return np.where(weights > 0, -np.log(np.where(weights > 0, weights, 1.0)), 0.0)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes at a temperature."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - scaled[np.arange(len(scaled)), np.asarray(y)]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, tolerance: float = 1e-6) -> float:
    """T > 0 minimising the NLL of softmax(logits / T), by golden-section search on log T.

    NLL is convex in 1/T, hence unimodal in log T, so a bracketing search needs no gradient,
    no step size and always returns a value inside [0.05, 20].
    """
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(y) or len(y) == 0:
        raise ValueError(f"need logits [N, C] and N labels, got {list(logits.shape)} and {len(y)}")
    ratio = (np.sqrt(5) - 1) / 2
    low, high = LOG_T_RANGE
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = nll(logits, y, np.exp(a)), nll(logits, y, np.exp(b))
    while high - low > tolerance:
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = nll(logits, y, np.exp(a))
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = nll(logits, y, np.exp(b))
    return float(np.exp((low + high) / 2))


def _confidence_bins(probs: np.ndarray, y: np.ndarray, bins: int):
    """Per equal-width confidence bin: count, mean confidence, accuracy of the top class."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins)
    safe = np.maximum(counts, 1)
    return (counts, np.bincount(which, confidence, bins) / safe, np.bincount(which, correct, bins) / safe)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    counts, confidence, accuracy = _confidence_bins(probs, y, bins)
    return float(np.sum(counts * np.abs(accuracy - confidence)) / max(counts.sum(), 1))


def reliability_points(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Mean confidence and accuracy of each non-empty bin: the reliability curve."""
    counts, confidence, accuracy = _confidence_bins(probs, y, bins)
    return confidence[counts > 0], accuracy[counts > 0]


def reliability_diagram(probs: np.ndarray, y: np.ndarray, path: Path, title: str, bins: int = 15) -> Path:
    """Accuracy against confidence per bin, as a PNG; uses the Agg canvas, no global backend."""
    counts, confidence, accuracy = _confidence_bins(probs, y, bins)
    centres = (np.arange(bins) + 0.5) / bins
    figure = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    filled = counts > 0
    axes.bar(centres[filled], accuracy[filled], width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.plot(confidence[filled], accuracy[filled], marker="o", color="tab:red", label="mean confidence")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy",
             title=f"{title}\nECE {expected_calibration_error(probs, y, bins):.4f}, n = {int(counts.sum())}")
    axes.legend(loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
