"""Test-set figures beside the loss: what a person compares models by (numpy only)."""

from __future__ import annotations

import numpy as np


def classification(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and, for two classes, ROC AUC."""
    y = np.asarray(y, dtype=np.int64)
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    recalls, f1s = [], []
    for c in range(probs.shape[1]):
        tp = float(np.sum((pred == c) & (y == c)))
        fp = float(np.sum((pred == c) & (y != c)))
        fn = float(np.sum((pred != c) & (y == c)))
        if c in present:
            recalls.append(tp / (tp + fn))
        if c in present or tp + fp > 0:
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    out = {
        "accuracy": float(np.mean(pred == y)) if len(y) else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
    }
    if probs.shape[1] == 2 and len(present) == 2:
        out["roc_auc"] = roc_auc(y, probs[:, 1])
    return out


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """The Mann-Whitney form: the chance a positive row outranks a negative one (ties: half)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R^2, RMSE and MAE, in the target's own units."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    err = pred - y
    sst = float(np.sum((y - y.mean()) ** 2))
    sse = float(np.sum(err**2))
    return {
        "r2": 1.0 - sse / sst if sst > 0 else 0.0,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
    }
