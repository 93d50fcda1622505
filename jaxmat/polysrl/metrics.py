"""Metrics for property prediction (numpy): regression MAE/RMSE/R^2, classification ROC-AUC/accuracy/F1."""

from __future__ import annotations

import numpy as np


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    error = y_pred - y_true
    total = np.sum((y_true - y_true.mean()) ** 2)
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": float(1.0 - np.sum(error**2) / total) if total > 0 else float("nan"),
    }


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve = probability a random positive scores above a random negative (ties 1/2)."""
    y_true, scores = np.asarray(y_true).astype(bool), np.asarray(scores, float)
    pos, neg = scores[y_true], scores[~y_true]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # average ranks over ties
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def classification_metrics(y_true, probability, threshold: float = 0.5) -> dict[str, float]:
    y_true = np.asarray(y_true).astype(bool)
    predicted = np.asarray(probability, float) >= threshold
    tp, fp, fn = np.sum(predicted & y_true), np.sum(predicted & ~y_true), np.sum(~predicted & y_true)
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return {"roc_auc": roc_auc(y_true, probability), "accuracy": float(np.mean(predicted == y_true)), "f1": float(f1)}


def summarize_folds(per_fold: list[dict[str, float]]) -> dict[str, dict]:
    """{'mae': {'mean', 'std', 'folds'}, ...} over folds (std with ddof=0, as Matbench)."""
    return {
        name: {"mean": float(np.mean([f[name] for f in per_fold])), "std": float(np.std([f[name] for f in per_fold])),
               "folds": [float(f[name]) for f in per_fold]}
        for name in per_fold[0]
    }
