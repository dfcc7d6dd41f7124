"""Classification metrics reported side by side for every model and baseline.

Besides the usual scores, ``trade_precision`` is what a trader cares about: of the bars
where the model would trade (long or short at confidence >= threshold), the share whose
label agrees with the direction taken.
"""

from __future__ import annotations

import numpy as np

from smc_core.labels import LABELS

_EPS = 1e-12


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], _EPS, 1.0))))


def classification_report(probs: np.ndarray, y: np.ndarray, threshold: float = 0.55) -> dict[str, float]:
    """Log loss, accuracy, macro-F1, per-class precision/recall, and trade precision."""
    probs, y = np.asarray(probs, dtype="float64"), np.asarray(y, dtype="int64")
    predicted = probs.argmax(axis=1)
    report: dict[str, float] = {"samples": float(len(y)), "log_loss": log_loss(probs, y),
                                "accuracy": float((predicted == y).mean())}
    f1s = []
    for code, name in enumerate(LABELS):
        tp = float(((predicted == code) & (y == code)).sum())
        precision = tp / max(float((predicted == code).sum()), 1.0)
        recall = tp / max(float((y == code).sum()), 1.0)
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
        report[f"precision_{name}"] = precision
        report[f"recall_{name}"] = recall
    report["macro_f1"] = float(np.mean(f1s))
    confidence = probs.max(axis=1)
    trades = (predicted != LABELS.index("skip")) & (confidence >= threshold)
    report["trades"] = float(trades.sum())
    report["trade_rate"] = float(trades.mean()) if len(y) else 0.0
    report["trade_precision"] = float((predicted[trades] == y[trades]).mean()) if trades.any() else float("nan")
    return report


def class_prior_log_loss(y_train: np.ndarray, y_eval: np.ndarray) -> float:
    """Log loss of always predicting the training class frequencies: the floor to beat."""
    prior = np.bincount(y_train, minlength=len(LABELS)) / len(y_train)
    return log_loss(np.tile(prior, (len(y_eval), 1)), y_eval)
