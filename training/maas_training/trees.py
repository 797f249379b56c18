"""Gradient-boosted trees (LightGBM) beside the MLP: fit on the same encoded features, export to
ONNX (onnxmltools) with the contract's outputs, served by the same ONNX Runtime path.

Why LightGBM: on this project's tables (bench/results.md, "tree vs MLP") it trains in well under
a second on 2 CPU cores where the MLP takes tens of seconds, its wheel is a few MB (XGBoost's
manylinux wheel carries its CUDA build and NCCL, hundreds of MB) and onnxmltools converts it to
one TreeEnsemble node. On a GPU instance the same job would hand the trees to XGBoost's CUDA
build (``device="cuda"``, ``tree_method="hist"``) or LightGBM's CUDA build (``device_type=
"cuda"``, which must be compiled for it); the MLP already uses CUDA and bf16 there.

Targets: class indices (multi-class or binary log loss), or a regression's standardised target
(squared error); the exported graph undoes the standardisation, like the MLP's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas_training import log
from maas_training.errors import TrainingError
from maas_training.shared import contract

MAX_ROUNDS = 2000
EARLY_STOPPING = 50
CONVERTER_OPSET = 15  # the newest onnxmltools' LightGBM converter writes


@dataclass
class FittedTrees:
    booster: Any  # lightgbm.Booster
    rounds: int
    n_classes: int  # 0: a regression


def _params(data: Any, hp: Any, n_rows: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "learning_rate": 0.05,
        "num_leaves": 31,
        # Small tables: leaves of 20 rows would be half the data; let them be smaller.
        "min_data_in_leaf": max(2, min(20, n_rows // 50)),
        "feature_fraction": 0.9,
        "bagging_fraction": 0.9,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": hp.seed,
        "deterministic": True,
        "num_threads": int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1),
        "verbosity": -1,
    }
    if data.regression:
        params["objective"] = "regression"
    elif len(data.class_names) == 2:
        params["objective"] = "binary"
    else:
        params.update(objective="multiclass", num_class=len(data.class_names))
    return params


def fit(
    data: Any, hp: Any, rows: np.ndarray, val: np.ndarray | None, rounds: int | None = None
) -> tuple[FittedTrees, float]:
    """Trees on rows; early-stopped on val (its loss returned), or exactly `rounds` rounds."""
    try:
        import lightgbm as lgb
    except ImportError:
        raise TrainingError("lightgbm is not installed (see training/requirements.txt)") from None
    params = _params(data, hp, len(rows))
    train_set = lgb.Dataset(
        data.x[rows], label=data.y[rows], weight=_weights(data, rows), free_raw_data=False
    )
    n_classes = 0 if data.regression else len(data.class_names)
    if val is None:
        booster = lgb.train(params, train_set, num_boost_round=max(1, rounds or 100))
        return FittedTrees(booster, booster.current_iteration(), n_classes), float("nan")
    val_set = lgb.Dataset(
        data.x[val], label=data.y[val], weight=_weights(data, val), reference=train_set
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[val_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)],
    )
    fitted = FittedTrees(booster, max(1, booster.best_iteration), n_classes)
    return fitted, loss(fitted, data.x[val], data.y[val], data.class_weights)


def _weights(data: Any, rows: np.ndarray) -> np.ndarray | None:
    """Per-row weights from the class weights (the MLP's loss weighs classes the same way)."""
    return None if data.class_weights is None else data.class_weights[data.y[rows]]


def raw(fitted: FittedTrees, x: np.ndarray) -> np.ndarray:
    """Class probabilities [n, C], or the standardised prediction [n]."""
    out = np.asarray(fitted.booster.predict(x, num_iteration=fitted.rounds), dtype=np.float64)
    if fitted.n_classes == 2:
        return np.stack([1.0 - out, out], axis=1)
    return out


def loss(
    fitted: FittedTrees, x: np.ndarray, y: np.ndarray, class_weights: np.ndarray | None = None
) -> float:
    """The MLP's validation loss on the same rows: cross-entropy (class-weighted like the
    MLP's when weights are given), or squared error."""
    out = raw(fitted, x)
    if fitted.n_classes == 0:
        return float(np.mean((out - y) ** 2))
    nll = -np.log(np.clip(out[np.arange(len(y)), y], 1e-15, 1.0))
    w = np.ones(len(y)) if class_weights is None else class_weights[y]
    return float(np.sum(w * nll) / np.sum(w))


def outputs(fitted: FittedTrees, data: Any, x: np.ndarray) -> np.ndarray:
    """What the exported graph outputs: probabilities, or the prediction in target units."""
    out = raw(fitted, x)
    if fitted.n_classes == 0:
        mean, std = data.target_scale
        return (out * std + mean).astype(np.float32)
    return out.astype(np.float32)


def export(fitted: FittedTrees, data: Any, path: Path, metadata: dict[str, str]) -> None:
    """model.onnx with the contract's inputs and outputs (see maas/core/contract.py)."""
    import onnx
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    from maas_training.export import finish_graph

    booster = fitted.booster.__class__(
        model_str=float32_thresholds(fitted.booster.model_to_string(num_iteration=fitted.rounds))
    )
    width = data.x.shape[1]
    proto = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[(data.input_name, FloatTensorType([None, width]))],
        zipmap=False,
        target_opset=CONVERTER_OPSET,
    )
    if fitted.n_classes == 0:
        _regression_head(proto, *data.target_scale)
        labels = None
    else:
        _probabilities_only(proto)
        labels = data.class_names
    finish_graph(proto, labels, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    log.info(f"exported {path.name} from LightGBM ({fitted.rounds} rounds) with onnxmltools")


def float32_thresholds(model: str) -> str:
    """A LightGBM model string whose split thresholds are each the largest float32 at or below
    the double LightGBM learned. ONNX's TreeEnsemble holds float32 thresholds and compares
    float32 inputs: a threshold rounded up past a feature value sends that row down the other
    branch (cars: a test row 0.027 off, 33x the export check's limit). For a float32 x,
    x <= t exactly when x <= the largest float32 <= t, so the trees decide as LightGBM does."""

    def down(value: str) -> str:
        t = float(value)
        f = np.float32(t)
        if float(f) > t:
            f = np.nextafter(f, np.float32(-np.inf))
        return repr(float(f))

    def line(match: re.Match[str]) -> str:
        return "threshold=" + " ".join(down(v) for v in match.group(1).split())

    # tree_sizes gives each tree's length in bytes, which new thresholds change: without it
    # LightGBM reads the trees one after the other.
    model = re.sub(r"^tree_sizes=.*\n", "", model, flags=re.MULTILINE)
    return re.sub(r"^threshold=(.*)$", line, model, flags=re.MULTILINE)


def _probabilities_only(proto: Any) -> None:
    """The converter's int64 label goes (the label head names classes); its probabilities
    output keeps the contract's name."""
    from maas_training.export import _rename_value

    graph = proto.graph
    keep = [o for o in graph.output if o.name == contract.PROBABILITIES_OUTPUT]
    if len(keep) != 1:
        raise TrainingError(f"unexpected LightGBM graph outputs {[o.name for o in graph.output]}")
    del graph.output[:]
    graph.output.extend(keep)
    _rename_value(graph, contract.LABEL_OUTPUT, "maas_trees_class_index")
    _batch_dims(keep[0])


def _regression_head(proto: Any, mean: float, std: float) -> None:
    """[n, 1] standardised -> "prediction" [n] in the target's units."""
    from onnx import TensorProto, helper

    graph = proto.graph
    [out] = graph.output
    graph.initializer.extend(
        [
            helper.make_tensor("maas_shape", TensorProto.INT64, [1], [-1]),
            helper.make_tensor("maas_std", TensorProto.FLOAT, [], [std]),
            helper.make_tensor("maas_mean", TensorProto.FLOAT, [], [mean]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Reshape", [out.name, "maas_shape"], ["maas_flat"]),
            helper.make_node("Mul", ["maas_flat", "maas_std"], ["maas_scaled"]),
            helper.make_node("Add", ["maas_scaled", "maas_mean"], [contract.PREDICTION_OUTPUT]),
        ]
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(contract.PREDICTION_OUTPUT, TensorProto.FLOAT, ["batch"])
    )


def _batch_dims(value: Any) -> None:
    d = value.type.tensor_type.shape.dim[0]
    d.ClearField("dim_value")
    d.dim_param = "batch"
