"""How a table's candidates are compared: the closed-form ridge family and the folds' scores."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from maas_training import ridge, selection
from maas_training.trainer import TrainResult


def _table(rows: int = 240, seed: int = 3) -> SimpleNamespace:
    """Encoded-like rows: features of very different scales, a one-hot block, a constant
    column, and a standardised noisy linear target."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.normal(200.0, 40.0, rows),  # a cholesterol-like scale
            rng.normal(0.0, 0.01, rows),
            rng.integers(0, 2, rows),
            np.ones(rows),  # constant: no information, no division by zero
            rng.normal(size=(rows, 6)),
        ]
    ).astype(np.float32)
    y = 0.01 * x[:, 0] + 30.0 * x[:, 1] + x[:, 4] - 0.5 * x[:, 5] + rng.normal(0, 1.5, rows)
    mean, std = float(y.mean()), float(y.std())
    return SimpleNamespace(
        x=x, y=((y - mean) / std).astype(np.float32), target_scale=(mean, std), input_name="x"
    )


@pytest.mark.parametrize("n_fit", [180, 24])
def test_ridge_is_scikit_learns_ridgecv_on_standardised_features(n_fit: int) -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # GIVEN the rows a fold fits on
    data = _table(rows=n_fit + 60, seed=n_fit)
    rows = np.arange(n_fit)
    # WHEN the closed form fits them, choosing its penalty by leave-one-out on those rows
    fitted, _ = ridge.fit(data, None, rows, None)
    # THEN it is RidgeCV's fit on standardised features: the same penalty, the same predictions
    reference = make_pipeline(StandardScaler(), RidgeCV(alphas=ridge.ALPHAS))
    reference.fit(data.x[rows].astype(np.float64), data.y[rows].astype(np.float64))
    assert fitted.alpha == pytest.approx(reference[-1].alpha_)
    x_new = data.x[n_fit:].astype(np.float64)
    ours = x_new @ fitted.coef + fitted.intercept
    np.testing.assert_allclose(ours, reference.predict(x_new), rtol=1e-6, atol=1e-8)


def test_ridge_penalty_is_chosen_by_the_exact_leave_one_out_error() -> None:
    # GIVEN standardised features of 30 rows (few rows: every row's leverage counts)
    data = _table(rows=30, seed=5)
    x = data.x.astype(np.float64)
    z = (x - x.mean(axis=0)) / np.where(x.std(axis=0) == 0, 1.0, x.std(axis=0))
    y = data.y.astype(np.float64)
    # WHEN the shortcut computes every penalty's leave-one-out error from one SVD
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    fast = ridge.loo_errors(u, s, u.T @ (y - y.mean()), y - y.mean())
    # THEN it equals refitting ridge (intercept unpenalised) 30 times without each row
    slow = []
    for alpha in ridge.ALPHAS:
        residuals = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            zk, yk = z[keep], y[keep]
            zc, yc = zk - zk.mean(axis=0), yk - yk.mean()
            w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ yc)
            residuals.append(y[i] - (yk.mean() + (z[i] - zk.mean(axis=0)) @ w))
        slow.append(np.mean(np.square(residuals)))
    np.testing.assert_allclose(fast, slow, rtol=1e-8)


def test_ridge_loss_is_measured_on_validation_rows_it_never_saw() -> None:
    data = _table()
    fitted, loss = ridge.fit(data, None, np.arange(180), np.arange(180, 240))
    z = data.x[180:].astype(np.float64) @ fitted.coef + fitted.intercept
    assert loss == pytest.approx(float(np.mean((z - data.y[180:]) ** 2)))
    assert 0.0 < loss < 1.0  # the target is mostly linear: far better than its mean


def test_ridge_graph_outputs_the_prediction_in_the_targets_units(tmp_path: Path) -> None:
    # GIVEN a ridge fit on standardised targets
    data = _table()
    fitted, _ = ridge.fit(data, None, np.arange(240), None)
    # WHEN it is exported and run by ONNX Runtime
    path = tmp_path / "model.onnx"
    ridge.export(fitted, data, path, {"maas.task": "regression"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [out] = session.run(["prediction"], {"x": data.x[:7]})
    # THEN the graph's [batch] prediction is the fit in the target's own units
    mean, std = data.target_scale
    expected = (data.x[:7].astype(np.float64) @ fitted.coef + fitted.intercept) * std + mean
    assert out.shape == (7,) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(out, ridge.outputs(fitted, data, data.x[:7]), rtol=1e-6)


def _folds(curves: list[list[float]]) -> list[TrainResult]:
    return [
        TrainResult(
            best_epoch=int(np.argmin(c)) + 1,
            epochs_run=len(c),
            best_val_loss=float(min(c)),
            best_val_accuracy=0.0,
            stopped_early=True,
            resumed_from_epoch=0,
            seconds=0.0,
            history=[{"val_loss": v, "val_r2": 1.0 - v} for v in c],
        )
        for c in curves
    ]


def test_each_fold_is_scored_at_the_epoch_the_other_folds_chose() -> None:
    # GIVEN three folds whose curves agree on epoch 2, and one fold with a lucky dip at epoch 4
    curves = [
        [0.9, 0.5, 0.6, 0.7, 0.8],
        [0.9, 0.5, 0.6, 0.7, 0.8],
        [0.9, 0.5, 0.6, 0.7, 0.8],
        [0.9, 0.6, 0.6, 0.1, 0.8],
    ]
    # WHEN the folds are merged
    result, spread = selection.merged(_folds(curves))
    # THEN the refit's epoch is the mean curve's minimum (epoch 2) ...
    assert result.best_epoch == 2
    # ... but no fold is scored at an epoch it helped choose: each of the three at the epoch
    # the other folds' mean picks (4: the lucky dip drags it there), the lucky fold at 2
    expected = [0.7, 0.7, 0.7, 0.6]
    assert result.best_val_loss == pytest.approx(np.mean(expected))
    assert result.best_val_accuracy == pytest.approx(1.0 - np.mean(expected))
    assert spread == pytest.approx(np.std(expected, ddof=1) / 2.0)
    # scored at the common epoch, the folds would have claimed 0.525
    assert result.best_val_loss > np.mean([0.5, 0.5, 0.5, 0.6])


def test_pick_prefers_the_simplest_candidate_within_one_standard_error() -> None:
    losses, spreads = [0.54, 0.52, 0.51], [0.04, 0.035, 0.034]
    assert selection.pick(losses, spreads, cv=True) == 0  # 0.54 <= 0.51 + 0.034
    assert selection.pick(losses, spreads, cv=False) == 2  # one split: the lowest loss
    assert selection.pick([0.60, 0.52, 0.51], spreads, cv=True) == 1
