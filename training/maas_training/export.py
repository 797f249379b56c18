"""fp32 ONNX export of the classifier, with the label head appended and a numeric check.

Exporter: torch.onnx.export(..., dynamo=True) — the torch.export-based exporter, the default
since torch 2.9 (the TorchScript one, dynamo=False, warns that it will be removed). If the
dynamo exporter fails (e.g. onnxscript missing in an older container) the TorchScript exporter
is tried once, and the choice is recorded in metrics.json. MAAS_ONNX_EXPORTER=torchscript
picks the TorchScript exporter up front: it exports this MLP in well under a second where the
dynamo exporter spends ~5-10 s building its op registry (worth it on a fast local loop only).

Graph contract (see maas/core/artifacts.py): input "input" FP32 [batch, F] of raw feature values;
outputs "probabilities" FP32 [batch, C] (softmax inside the graph) and "label" STRING [batch]
(ArgMax + Gather over a string initializer of class names).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maas_training import log
from maas_training.errors import TrainingError
from maas_training.model import Probabilities

INPUT_NAME = "input"
PROBABILITIES_NAME = "probabilities"
LABEL_NAME = "label"
BATCH_DIM = "batch"
# onnxruntime 1.20 (the oldest the serving layer allows) reads IR <= 10 and opset <= 21.
OPSET = 18
MAX_IR_VERSION = 10
MAX_ABS_DIFF = 1e-4


@dataclass(frozen=True)
class ExportInfo:
    exporter: str
    opset: int
    ir_version: int
    max_abs_diff: float
    onnx_accuracy: float | None = None


def _export_dynamo(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim(BATCH_DIM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[PROBABILITIES_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            verbose=False,
        )


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[PROBABILITIES_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, PROBABILITIES_NAME: {0: BATCH_DIM}},
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _set_batch_dim(value_info) -> None:  # onnx.ValueInfoProto
    dim = value_info.type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = BATCH_DIM


def add_label_head(model, class_names: list[str]):  # onnx.ModelProto -> onnx.ModelProto
    """Append ArgMax(probabilities) -> Gather(class names) as the STRING output "label"."""
    from onnx import TensorProto, helper

    graph = model.graph
    used = {i.name for i in graph.initializer} | {n for node in graph.node for n in node.output}
    names_init, index_name = "maas_class_names", "maas_label_index"
    if names_init in used or index_name in used or LABEL_NAME in used:
        raise RuntimeError("exported graph already uses the names of the label head")
    graph.initializer.append(
        helper.make_tensor(
            names_init,
            TensorProto.STRING,
            [len(class_names)],
            [c.encode("utf-8") for c in class_names],
        )
    )
    graph.node.append(
        helper.make_node(
            "ArgMax",
            [PROBABILITIES_NAME],
            [index_name],
            name="maas_label_argmax",
            axis=1,
            keepdims=0,
        )
    )
    graph.node.append(
        helper.make_node(
            "Gather", [names_init, index_name], [LABEL_NAME], name="maas_label_gather", axis=0
        )
    )
    graph.output.append(helper.make_tensor_value_info(LABEL_NAME, TensorProto.STRING, [BATCH_DIM]))
    return model


def _raw_export(kind: str, module: nn.Module, n_features: int, directory: Path):
    """Export with one exporter and check the bare signature (ModelProto, or raise)."""
    import onnx

    example = torch.zeros(2, n_features, dtype=torch.float32)  # batch 2: no 0/1 specialisation
    raw = directory / f"{kind}.onnx"
    (_export_dynamo if kind == "dynamo" else _export_torchscript)(module, example, raw)
    model = onnx.load(str(raw))  # pulls in external data, if the exporter wrote any
    graph = model.graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if inputs != [INPUT_NAME] or outputs != [PROBABILITIES_NAME]:
        raise RuntimeError(f"unexpected exported graph: inputs {inputs}, outputs {outputs}")
    _set_batch_dim(graph.input[0])
    _set_batch_dim(graph.output[0])
    in_dims = graph.input[0].type.tensor_type.shape.dim
    if len(in_dims) != 2 or in_dims[1].dim_value != n_features:
        raise RuntimeError("exported input shape is not [batch, n_features]")
    return model


def _finish(model, class_names: list[str], feature_names: list[str]):
    import onnx

    add_label_head(model, class_names)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > 21:
        raise RuntimeError(f"exported opset {opset} is newer than onnxruntime 1.20 reads (21)")
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "maas_training"
    del model.metadata_props[:]
    for key, value in (
        ("maas.task", "classification"),
        ("maas.labels", json.dumps(class_names)),
        ("maas.features", json.dumps(feature_names)),
    ):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model, opset


def verify(
    path: Path, module: nn.Module, x: np.ndarray, class_names: list[str], y: np.ndarray | None
) -> tuple[float, float | None]:
    """Run the ONNX file in onnxruntime and compare with torch fp32; fail past MAX_ABS_DIFF."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TrainingError(
            "onnxruntime is not installed in the training container (see training/requirements.txt)"
        ) from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    probs, labels = sess.run([PROBABILITIES_NAME, LABEL_NAME], {INPUT_NAME: x})
    diff = float(np.max(np.abs(probs - expected))) if len(x) else 0.0
    if not diff < MAX_ABS_DIFF:
        raise TrainingError(
            f"ONNX export check failed: onnxruntime probabilities differ from torch by {diff:.3g}"
            f" (limit {MAX_ABS_DIFF})"
        )
    names = np.asarray(class_names, dtype=object)
    if [str(v) for v in labels] != [str(v) for v in names[probs.argmax(axis=1)]]:
        raise TrainingError("ONNX export check failed: the label output does not match argmax")
    one = sess.run([PROBABILITIES_NAME], {INPUT_NAME: x[:1]})[0]
    if one.shape != (1, len(class_names)):
        raise TrainingError(f"ONNX export check failed: batch of 1 gave shape {one.shape}")
    accuracy = float((probs.argmax(axis=1) == y).mean()) if y is not None and len(y) else None
    return diff, accuracy


def export_classifier(
    model: nn.Module,
    path: Path,
    *,
    n_features: int,
    class_names: list[str],
    feature_names: list[str],
    x_check: np.ndarray,
    x_eval: np.ndarray | None = None,
    y_eval: np.ndarray | None = None,
) -> ExportInfo:
    import onnx

    module = Probabilities(model.to("cpu").float()).eval()
    exporter = os.environ.get("MAAS_ONNX_EXPORTER", "dynamo").strip().lower() or "dynamo"
    if exporter not in ("dynamo", "torchscript"):
        raise TrainingError(f"MAAS_ONNX_EXPORTER must be dynamo or torchscript: {exporter!r}")
    with tempfile.TemporaryDirectory(prefix="maas-export-") as tmp:
        try:
            proto = _raw_export(exporter, module, n_features, Path(tmp))
        except Exception as e:
            if exporter != "dynamo":
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warn(
                f"dynamo ONNX export failed ({type(e).__name__}: {first[:300]}); "
                "falling back to the TorchScript exporter"
            )
            exporter = "torchscript"
            proto = _raw_export(exporter, module, n_features, Path(tmp))
    proto, opset = _finish(proto, class_names, feature_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    ir = int(proto.ir_version)
    log.info(f"exported {path.name} with the {exporter} exporter (opset {opset}, IR {ir})")
    diff, _ = verify(path, module, x_check, class_names, None)
    accuracy = None
    if x_eval is not None and y_eval is not None:
        _, accuracy = verify(path, module, x_eval, class_names, y_eval)
    log.info(f"onnxruntime matches torch fp32: max abs diff {diff:.3g}")
    return ExportInfo(exporter, opset, ir, diff, accuracy)
