"""Ridge regression in closed form beside the MLP and the trees, for a table's numeric target.

The MLP at depth 0 is a linear model too, but fitted by Adam and early stopping on a few dozen
validation rows it stops short of its optimum on small tables (diabetes' 282 rows: fold R^2
0.42, where the same features' least-squares fit gets 0.47). A linear model has one optimum,
found exactly: the features are standardised on the rows it is fitted on, and the penalty is
chosen among ALPHAS by efficient leave-one-out error on those rows (scikit-learn's RidgeCV does
the same), so a fold's fit never sees its validation rows.

The exported graph is one MatMul and one Add on the encoded features (the standardisation and
the target's scale folded into the weights), with the contract's "prediction" output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas_training import log
from maas_training.shared import contract

ALPHAS = np.logspace(-3, 4, 15)  # on standardised features and target
OPSET = 18


@dataclass
class FittedRidge:
    coef: np.ndarray  # float64 [F]: encoded features -> standardised target
    intercept: float
    alpha: float


def fit(
    data: Any, hp: Any, rows: np.ndarray, val: np.ndarray | None, rounds: int | None = None
) -> tuple[FittedRidge, float]:
    """Ridge on rows, its penalty by leave-one-out on rows; the loss on val (squared error in
    standardised units, the MLP's validation loss), or NaN without val."""
    del hp, rounds  # no seed, no rounds: the fit is exact
    x = data.x[rows].astype(np.float64)
    y = data.y[rows].astype(np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    y_mean = float(y.mean())
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    uty = u.T @ (y - y_mean)
    alpha = float(ALPHAS[int(np.argmin(loo_errors(u, s, uty, y - y_mean)))])
    w = vt.T @ (s / (s**2 + alpha) * uty)
    coef = w / scale
    model = FittedRidge(coef, y_mean - float(mean @ coef), alpha)
    if val is None:
        return model, float("nan")
    z_val = data.x[val].astype(np.float64) @ model.coef + model.intercept
    return model, float(np.mean((z_val - data.y[val]) ** 2))


def loo_errors(u: np.ndarray, s: np.ndarray, uty: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """Each of ALPHAS' mean squared leave-one-out error, from one SVD of the centred features
    (z = u diag(s) vt): a row's LOO residual is its residual over (1 - its leverage)."""
    errors = np.empty(len(ALPHAS))
    u2 = u**2
    for i, alpha in enumerate(ALPHAS):
        shrink = s**2 / (s**2 + alpha)
        leverage = u2 @ shrink + 1.0 / len(centred)  # the intercept's share too
        errors[i] = np.mean(((centred - u @ (shrink * uty)) / (1.0 - leverage)) ** 2)
    return errors


def outputs(fitted: FittedRidge, data: Any, x: np.ndarray) -> np.ndarray:
    """What the exported graph outputs: the prediction in the target's units."""
    weights, bias = _folded(fitted, data)
    return (x.astype(np.float32) @ weights + bias).reshape(-1)


def _folded(fitted: FittedRidge, data: Any) -> tuple[np.ndarray, np.float32]:
    """[F, 1] weights and a bias in the target's units, float32 as the graph holds them."""
    mean, std = data.target_scale
    weights = (fitted.coef * std).astype(np.float32).reshape(-1, 1)
    return weights, np.float32(fitted.intercept * std + mean)


def export(fitted: FittedRidge, data: Any, path: Path, metadata: dict[str, str]) -> None:
    """model.onnx with the contract's input and "prediction" output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from maas_training.export import finish_graph

    weights, bias = _folded(fitted, data)
    width = data.x.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [data.input_name, "maas_ridge_w"], ["maas_ridge_xw"]),
            helper.make_node("Add", ["maas_ridge_xw", "maas_ridge_b"], ["maas_ridge_out"]),
            helper.make_node(
                "Reshape", ["maas_ridge_out", "maas_shape"], [contract.PREDICTION_OUTPUT]
            ),
        ],
        "ridge",
        [helper.make_tensor_value_info(data.input_name, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(contract.PREDICTION_OUTPUT, TensorProto.FLOAT, ["batch"])],
        initializer=[
            numpy_helper.from_array(weights, "maas_ridge_w"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "maas_ridge_b"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "maas_shape"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    finish_graph(proto, None, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    log.info(f"exported {path.name} from ridge regression (alpha {fitted.alpha:.3g})")
