"""fp32 ONNX export of the text models (token ids in), checked against torch in onnxruntime.

Same exporter policy as export.py: torch.onnx.export(dynamo=True), the TorchScript exporter as
the fallback (or up front with MAAS_ONNX_EXPORTER=torchscript). Pretrained BERT encoders ask
for the TorchScript exporter first (``prefer``): ONNX Runtime's transformer fusions recognise
its attention subgraph and not the dynamo exporter's, and the fused, int8 attention is what
makes the served encoder fast (maas.optimize.quantize, bench/results.md); the dynamo exporter
is then the fallback. Batch and sequence length are dynamic. Classifiers get the STRING "label" head
of export.py after "probabilities".
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maas_training import log
from maas_training.errors import TrainingError
from maas_training.export import (
    LABEL_NAME,
    MAX_IR_VERSION,
    OPSET,
    PROBABILITIES_NAME,
    ExportInfo,
    add_label_head,
)

BATCH_DIM = "batch"
SEQ_DIM = "sequence"
RAW_OUTPUT = "maas_raw_output"  # exported under this name, then renamed (see _rename_value)


def _export(
    kind: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_name: str,
    path: Path,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            batch = torch.export.Dim(BATCH_DIM)
            seq = torch.export.Dim(SEQ_DIM)
            shapes = tuple({0: batch, 1: seq} if t.ndim == 2 else {0: batch} for t in example)
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=True,
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_shapes=shapes,
                opset_version=OPSET,
                verbose=False,
            )
        else:
            axes = {n: {0: BATCH_DIM, 1: SEQ_DIM} for n in input_names}
            axes[output_name] = {0: BATCH_DIM}
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=False,
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )


def _rename_value(graph, old: str, new: str) -> None:  # onnx.GraphProto
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def _claim_output_name(graph, name: str) -> None:  # onnx.GraphProto
    """The dynamo exporter names internal values after ops ("embedding"): move them aside."""
    used = {n for node in graph.node for n in [*node.input, *node.output]}
    used |= {i.name for i in graph.initializer}
    if name in used:
        _rename_value(graph, name, f"{name}__internal")
    _rename_value(graph, RAW_OUTPUT, name)


def _name_dims(model, input_names: Sequence[str]) -> None:  # onnx.ModelProto
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        for d, name in zip(dims, (BATCH_DIM, SEQ_DIM), strict=False):
            d.ClearField("dim_value")
            d.dim_param = name
    for vi in model.graph.output:
        d = vi.type.tensor_type.shape.dim[0]
        d.ClearField("dim_value")
        d.dim_param = BATCH_DIM


def export_text_model(
    module: nn.Module,
    path: Path,
    *,
    feeds: dict[str, np.ndarray],
    output_name: str,
    class_names: list[str] | None,
    metadata: dict[str, str],
    prefer: str = "dynamo",
) -> ExportInfo:
    """Export module(*feeds.values()) -> output_name; a label head when class_names is given.

    ``prefer`` is the exporter tried first (MAAS_ONNX_EXPORTER overrides it); the other one is
    the fallback."""
    import onnx

    module = module.to("cpu").float().eval()
    input_names = list(feeds)
    example = tuple(torch.from_numpy(np.ascontiguousarray(v[:2])) for v in feeds.values())
    exporter = os.environ.get("MAAS_ONNX_EXPORTER", prefer).strip().lower() or prefer
    if exporter not in ("dynamo", "torchscript"):
        raise TrainingError(f"MAAS_ONNX_EXPORTER must be dynamo or torchscript: {exporter!r}")
    with tempfile.TemporaryDirectory(prefix="maas-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            _export(exporter, module, example, input_names, RAW_OUTPUT, raw)
        except Exception as e:
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warn(
                f"{exporter} ONNX export failed ({type(e).__name__}: {first[:300]}); "
                f"falling back to the {other} exporter"
            )
            exporter = other
            _export(exporter, module, example, input_names, RAW_OUTPUT, raw)
        proto = onnx.load(str(raw))
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != input_names or got_out != [RAW_OUTPUT]:
        raise TrainingError(f"unexpected exported graph: inputs {got_in}, outputs {got_out}")
    _claim_output_name(proto.graph, output_name)
    _name_dims(proto, input_names)
    if class_names is not None:
        add_label_head(proto, class_names)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    proto.producer_name = "maas_training"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(proto, full_check=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    log.info(f"exported {path.name} with the {exporter} exporter (opset {opset})")
    diff = verify(path, module, feeds, output_name, class_names)
    return ExportInfo(exporter, opset, int(proto.ir_version), diff)


def run_onnx(path: Path, feeds: dict[str, np.ndarray], output: str, batch: int = 32) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    parts = [
        sess.run([output], {k: v[s : s + batch] for k, v in feeds.items()})[0]
        for s in range(0, n, batch)
    ]
    return np.concatenate(parts)


@torch.no_grad()
def run_torch(module: nn.Module, feeds: dict[str, np.ndarray], batch: int = 32) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    parts = []
    for s in range(0, n, batch):
        args = [torch.from_numpy(np.ascontiguousarray(v[s : s + batch])) for v in feeds.values()]
        parts.append(module(*args).float().numpy())
    return np.concatenate(parts)


def verify(
    path: Path,
    module: nn.Module,
    feeds: dict[str, np.ndarray],
    output_name: str,
    class_names: list[str] | None,
) -> float:
    """onnxruntime vs torch fp32 on the check feeds; fails past 1e-3 (max abs)."""
    got = run_onnx(path, feeds, output_name)
    want = run_torch(module, feeds)
    diff = float(np.max(np.abs(got - want))) if len(got) else 0.0
    if not diff < 1e-3:
        raise TrainingError(
            f"ONNX export check failed: onnxruntime differs from torch by {diff:.3g} (limit 1e-3)"
        )
    if class_names is not None:
        labels = run_onnx(path, {k: v[:4] for k, v in feeds.items()}, LABEL_NAME)
        names = np.asarray(class_names, dtype=object)[got[:4].argmax(axis=1)]
        if [str(x) for x in labels] != [str(x) for x in names]:
            raise TrainingError("ONNX export check failed: the label output does not match argmax")
    log.info(f"onnxruntime matches torch fp32: max abs diff {diff:.3g}")
    return diff


def metadata_for(task: str, recipe: str, labels: list[str] | None) -> dict[str, str]:
    meta = {"maas.task": task, "maas.recipe": recipe}
    if labels is not None:
        meta["maas.labels"] = json.dumps(labels)
    return meta


__all__ = ["PROBABILITIES_NAME", "export_text_model", "metadata_for", "run_onnx", "run_torch"]
