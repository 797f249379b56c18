"""Comparing candidates fairly: the same rows for every family, k folds on small tables.

A table of a few hundred rows leaves a validation split of a few dozen: one split's loss then
picks the MLP depth (or trees over the MLP) by noise. Up to CV_MAX_ROWS rows of train +
validation, every candidate of a recipe that refits is scored by CV_FOLDS-fold cross-validation
over train + validation (stratified for classes) and the winner is refitted on all of it; above,
by the one validation split. Either way every candidate sees the same rows.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maas_training import log
from maas_training.recipes import Encoded, Family, TrainedRecipe
from maas_training.trainer import TrainResult

CV_MAX_ROWS = 1000
CV_FOLDS = 5
Folds = list[tuple[np.ndarray, np.ndarray]]  # (fit rows, validation rows) per fold


def folds(recipe: TrainedRecipe, data: Encoded, hp: Any, n_candidates: int) -> Folds | None:
    """k folds of train + validation, or None: compare on the one validation split."""
    both = np.sort(np.concatenate([data.split.train, data.split.validation]))
    if not recipe.refit or n_candidates < 2 or len(both) > CV_MAX_ROWS:
        return None
    rng = np.random.default_rng(hp.seed)
    fold = np.empty(len(both), dtype=np.int64)
    groups = [np.arange(len(both))] if data.regression else _by_class(data.y[both])
    offset = 0
    for members in groups:  # round-robin after a shuffle: every class in every fold
        shuffled = rng.permutation(members)
        fold[shuffled] = (np.arange(len(shuffled)) + offset) % CV_FOLDS
        offset += len(shuffled)
    plan = [(both[fold != k], both[fold == k]) for k in range(CV_FOLDS)]
    log.info(f"comparing candidates by {CV_FOLDS}-fold cross-validation over {len(both)} rows")
    return plan


def _by_class(y: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(y == c) for c in np.unique(y)]


def score_of(data: Encoded, out: np.ndarray, rows: np.ndarray) -> float:
    """Accuracy, or R^2 (in standardised units, which R^2 does not see)."""
    y = data.y[rows]
    if data.regression:
        sst = float(np.sum((y - y.mean()) ** 2))
        return 1.0 - float(np.sum((out.reshape(-1) - y) ** 2)) / sst if sst > 0 else 0.0
    return float(np.mean(out.argmax(axis=1) == y))


def merged(results: list[TrainResult]) -> tuple[TrainResult, float]:
    """The folds' results as one. The epoch count is the one that minimises the folds' mean
    validation loss, and each fold is scored at the epoch the other folds choose: the epoch is
    a setting chosen on validation rows, and scoring a fold at an epoch it helped choose (or
    at its own best, an oracle) flatters the noisiest models most. On diabetes' 282 rows that
    optimism was 0.005-0.013 of the MLPs' loss, enough to rank them above an exact linear fit
    that scores 0.06 R^2 better on held-back rows. Folds without a history (trees) keep their
    own best."""
    curves = [[h["val_loss"] for h in r.history] for r in results]
    if all(curves):
        length = min(len(c) for c in curves)
        table = np.array([c[:length] for c in curves])
        at = int(np.argmin(table.mean(axis=0)))
        score = next(k for k in results[0].history[0] if k.startswith("val_") and k != "val_loss")
        best_epoch = at + 1
        picks = [
            int(np.argmin(np.delete(table, k, axis=0).mean(axis=0))) if len(table) > 1 else at
            for k in range(len(table))
        ]
        losses = [float(table[k, e]) for k, e in enumerate(picks)]
        quality = float(np.mean([r.history[e][score] for r, e in zip(results, picks, strict=True)]))
    else:
        best_epoch = max(1, round(float(np.mean([r.best_epoch for r in results]))))
        losses = [r.best_val_loss for r in results]
        quality = float(np.mean([r.best_val_accuracy for r in results]))
    loss = float(np.mean(losses))
    spread = float(np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else 0.0
    result = TrainResult(
        best_epoch=best_epoch,
        epochs_run=max(r.epochs_run for r in results),
        best_val_loss=loss,
        best_val_accuracy=quality,
        stopped_early=all(r.stopped_early for r in results),
        resumed_from_epoch=0,
        seconds=sum(r.seconds for r in results),
        history=results[0].history,
    )
    return result, spread


def pick(losses: list[float], spreads: list[float], cv: bool) -> int:
    """The lowest validation loss; under k-fold, the most preferred candidate (the earliest:
    candidates come in order of their ranks, simplest first) within one standard error of it:
    on a few hundred rows the folds cannot tell closer candidates apart, and the simpler one
    varies less."""
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    if not cv:
        return best
    bound = losses[best] + spreads[best]
    return next(i for i in range(len(losses)) if losses[i] <= bound)


def fit_family(
    family: Family, data: Encoded, hp: Any, plan: Folds | None
) -> tuple[Any, tuple[TrainResult, float], int]:
    """(fitted on the first fold or the train split, its result, rows its rounds were found on)."""
    pairs = plan or [(data.split.train, data.split.validation)]
    results, first = [], None
    for rows, val in pairs:
        t0 = time.perf_counter()
        fitted, loss = family.fit(data, hp, rows, val, None)
        rounds = family.rounds(fitted)
        z = _standardised(family, fitted, data, val)
        results.append(TrainResult(rounds, rounds, loss, score_of(data, z, val), True, 0, 0.0, []))
        results[-1].seconds = time.perf_counter() - t0
        first = first if first is not None else fitted
    return first, merged(results), round(float(np.mean([len(r) for r, _ in pairs])))


def _standardised(family: Family, fitted: Any, data: Encoded, rows: np.ndarray) -> np.ndarray:
    out = family.outputs(fitted, data, data.x[rows])
    if data.target_scale is None:
        return out
    mean, std = data.target_scale
    return (out.astype(np.float64) - mean) / std


def measure(export: Callable[[Path], None], x1: np.ndarray, repeats: int = 200) -> dict[str, float]:
    """A candidate's ONNX size and batch-1 latency (p50, ONNX Runtime, one thread)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="maas-candidate-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        export(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(10):
            sess.run(None, {name: x1})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            sess.run(None, {name: x1})
            times.append(time.perf_counter_ns() - t0)
        return {
            "size_bytes": path.stat().st_size,
            "latency_ms_batch1": float(np.percentile(times, 50)) / 1e6,
        }
