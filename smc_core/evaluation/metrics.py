"""Classification metrics reported side by side for every model and baseline.

Besides the usual scores, ``trade_precision`` is what a trader cares about: of the bars
where the model would trade (long or short at confidence >= threshold), the share whose
label agrees with the direction taken. ``trade_chance`` is what the same trades would score
if their directions carried no information (each direction's share among the evaluated
labels), and ``trade_edge`` the difference: a model with no edge sits near 0 however
imbalanced the labels are.
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
    frequency = np.bincount(y, minlength=len(LABELS)) / max(len(y), 1)
    report["trade_chance"] = float(frequency[predicted[trades]].mean()) if trades.any() else float("nan")
    report["trade_edge"] = report["trade_precision"] - report["trade_chance"]
    return report


def class_prior_log_loss(y_train: np.ndarray, y_eval: np.ndarray) -> float:
    """Log loss of always predicting the training class frequencies: the floor to beat."""
    prior = np.bincount(y_train, minlength=len(LABELS)) / len(y_train)
    return log_loss(np.tile(prior, (len(y_eval), 1)), y_eval)


COMPARISON_METRICS = ("log_loss", "macro_f1", "accuracy", "precision_long", "recall_long", "precision_short",
                      "recall_short", "precision_skip", "recall_skip", "trades", "trade_precision", "trade_chance",
                      "trade_edge")


def comparison_markdown(reports: dict[str, dict[str, float]], metrics=COMPARISON_METRICS) -> str:
    """Models as columns, metrics as rows: the side-by-side table for metadata and the demo."""
    names = list(reports)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in metrics:
        cells = []
        for name in names:
            value = reports[name].get(metric, float("nan"))
            cells.append("–" if value != value else (f"{value:.0f}" if metric == "trades" else f"{value:.4f}"))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
