"""Real small models for tests and the bench: a softmax regression trained in well under a
second on scikit-learn's bundled tables, exported to ONNX per the artifacts contract."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


class TinyClassifier:
    """A trained softmax regression and its ONNX graph, built per the artifacts contract."""

    def __init__(
        self,
        weights: np.ndarray,
        bias: np.ndarray,
        mean: np.ndarray,
        scale: np.ndarray,
        classes: list[str],
    ) -> None:
        self.weights = weights.astype(np.float32)  # [C, F]
        self.bias = bias.astype(np.float32)  # [C]
        self.mean = mean.astype(np.float32)
        self.scale = scale.astype(np.float32)
        self.classes = classes

    @property
    def n_features(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.weights.shape[0])

    def onnx_bytes(self) -> bytes:
        """input FP32 [batch, F] -> probabilities FP32 [batch, C], label STRING [batch]."""
        from onnx import TensorProto, checker, helper, numpy_helper

        f, c = self.n_features, self.n_classes
        names: Any = [name.encode() for name in self.classes]  # onnx's stubs say numbers only
        inits = [
            numpy_helper.from_array(self.mean, "mean"),
            numpy_helper.from_array(self.scale, "scale"),
            numpy_helper.from_array(self.weights.T.copy(), "weights"),
            numpy_helper.from_array(self.bias, "bias"),
            helper.make_tensor("classes", TensorProto.STRING, [c], names),
        ]
        nodes = [
            helper.make_node("Sub", ["input", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "scale"], ["standardised"]),
            helper.make_node("Gemm", ["standardised", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["index"], axis=1, keepdims=0),
            helper.make_node("Gather", ["classes", "index"], ["label"], axis=0),
        ]
        graph = helper.make_graph(
            nodes,
            "tiny-classifier",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", f])],
            [
                helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", c]),
                helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
            ],
            initializer=inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="maas-tests"
        )
        model.ir_version = 9
        checker.check_model(model)
        return model.SerializeToString()


def load_dataset(dataset: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """iris or digits from scikit-learn's bundled files, without importing scikit-learn (slow)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations, "scikit-learn is not installed"
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if dataset == "iris":
        lines = (data_dir / "iris.csv").read_text().splitlines()
        classes = lines[0].split(",")[2:]
        table = np.loadtxt(lines[1:], delimiter=",")
    elif dataset == "digits":
        with gzip.open(data_dir / "digits.csv.gz", "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        classes = [str(d) for d in range(10)]
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64), classes


def train_tiny_classifier(
    dataset: str = "iris", *, steps: int = 300, learning_rate: float = 0.5
) -> tuple[TinyClassifier, np.ndarray]:
    """Softmax regression by full-batch gradient descent: well under a second, deterministic."""
    x, y, classes = load_dataset(dataset)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    n, f = z.shape
    c = len(classes)
    onehot = np.eye(c, dtype=np.float32)[y]
    weights = np.zeros((c, f), dtype=np.float32)
    bias = np.zeros(c, dtype=np.float32)
    for _ in range(steps):
        logits = z @ weights.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - onehot) / n
        weights -= learning_rate * (grad.T @ z + 1e-3 * weights)
        bias -= learning_rate * grad.sum(axis=0)
    return TinyClassifier(weights, bias, mean, scale, classes), x


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def infer_body(
    rows: Iterable[Iterable[float]] | np.ndarray,
    *,
    request_id: str | None = None,
    name: str = "input",
    nested: bool = False,
    outputs: list[str] | None = None,
) -> dict[str, Any]:
    """An OIP inference request for a [N, F] FP32 batch."""
    array = np.asarray(rows, dtype=np.float32)
    data = array.tolist() if nested else array.reshape(-1).tolist()
    body: dict[str, Any] = {
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32", "data": data}]
    }
    if request_id is not None:
        body["id"] = request_id
    if outputs is not None:
        body["outputs"] = [{"name": o} for o in outputs]
    return body
